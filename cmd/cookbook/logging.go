package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
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

// fanout is a slog.Handler that sends every record to several handlers: the terminal and
// the run's log file.
type fanout []slog.Handler

func (f fanout) Enabled(ctx context.Context, l slog.Level) bool {
	for _, h := range f {
		if h.Enabled(ctx, l) {
			return true
		}
	}
	return false
}

func (f fanout) Handle(ctx context.Context, r slog.Record) error {
	var errs []error
	for _, h := range f {
		if h.Enabled(ctx, r.Level) {
			errs = append(errs, h.Handle(ctx, r.Clone()))
		}
	}
	return errors.Join(errs...)
}

func (f fanout) WithAttrs(attrs []slog.Attr) slog.Handler {
	out := make(fanout, len(f))
	for i, h := range f {
		out[i] = h.WithAttrs(attrs)
	}
	return out
}

func (f fanout) WithGroup(name string) slog.Handler {
	out := make(fanout, len(f))
	for i, h := range f {
		out[i] = h.WithGroup(name)
	}
	return out
}
