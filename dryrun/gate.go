// Package dryrun is the choke point that every write of every backend passes through.
//
// A backend (OpenStack, Kubernetes, SSH) calls Gate.Write with a human description of the
// change and a function that makes it. In a real run the description is logged and the
// function called; in a dry run "DRY-RUN: would <action>" is logged and the function is not
// called, so a dry run reads everything for real and changes nothing.
package dryrun

import (
	"context"
	"log/slog"
	"sync/atomic"
)

// Gate decides whether writes happen. The zero value and a nil *Gate perform every write
// without logging, which is what small unit tests want.
type Gate struct {
	// DryRun, when true, turns every write into a log line.
	DryRun bool
	// Log receives one line per write, before it is made. Nil means no logging.
	Log *slog.Logger

	performed atomic.Int64
	skipped   atomic.Int64
}

// Enabled reports whether g is in dry-run mode. Backends use it to return a plausible
// result for a write they did not make, so later steps can still describe their work.
func (g *Gate) Enabled() bool { return g != nil && g.DryRun }

// Write logs action (a lowercase verb phrase with the concrete values, such as
// "cordon node toolsbeta-test-k8s-worker-3") and then performs fn, unless g is in dry-run
// mode, in which case it only logs "DRY-RUN: would <action>" and returns nil. attrs are
// extra key/value pairs for the log line.
func (g *Gate) Write(ctx context.Context, action string, fn func(context.Context) error, attrs ...any) error {
	if g == nil {
		return fn(ctx)
	}
	if g.DryRun {
		g.skipped.Add(1)
		if g.Log != nil {
			g.Log.InfoContext(ctx, "DRY-RUN: would "+action, attrs...)
		}
		return nil
	}
	if g.Log != nil {
		g.Log.InfoContext(ctx, action, attrs...)
	}
	g.performed.Add(1)
	return fn(ctx)
}

// Counts returns how many writes were performed and how many were skipped by dry-run.
func (g *Gate) Counts() (performed, skipped int64) {
	if g == nil {
		return 0, 0
	}
	return g.performed.Load(), g.skipped.Load()
}
