package main

import (
	"fmt"
	"io"
	"time"

	"github.com/charmbracelet/log"
)

// logFormats are the values of --log-format: how the terminal's (stderr's) log lines look.
var logFormats = map[string]log.Formatter{
	"text":   log.TextFormatter,   // for people; coloured by level on a terminal, plain when piped
	"logfmt": log.LogfmtFormatter, // key=value, for grep and awk
	"json":   log.JSONFormatter,   // one object a line, for a log system
}

// checkLogFormat returns an error naming a --log-format value that is not one.
func checkLogFormat(format string) error {
	if _, ok := logFormats[format]; !ok {
		return fmt.Errorf("--log-format: %q is not a log format (expected text, logfmt or json)", format)
	}
	return nil
}

// newLogger returns a logger on w in format (text, logfmt or json); debug lines only when
// verbose. Colours depend on w: none when it is not a terminal.
func newLogger(w io.Writer, verbose, timestamps bool, format string) *log.Logger {
	f, ok := logFormats[format]
	if !ok {
		f = log.TextFormatter
	}
	l := log.NewWithOptions(w, log.Options{
		ReportTimestamp: timestamps,
		TimeFormat:      time.DateTime,
		Formatter:       f,
	})
	if verbose {
		l.SetLevel(log.DebugLevel)
	}
	return l
}
