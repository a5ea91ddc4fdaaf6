package main

import (
	"io"
	"time"

	"github.com/charmbracelet/log"
)

// newLogger returns a human-readable logger on w; debug lines only when verbose.
func newLogger(w io.Writer, verbose bool, timestamps bool) *log.Logger {
	l := log.NewWithOptions(w, log.Options{
		ReportTimestamp: timestamps,
		TimeFormat:      time.DateTime,
	})
	if verbose {
		l.SetLevel(log.DebugLevel)
	}
	return l
}
