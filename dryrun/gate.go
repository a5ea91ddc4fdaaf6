// Package dryrun is the choke point that every write of every backend passes through.
//
// A backend (OpenStack, Kubernetes, SSH) calls Gate.Write with a human description of the
// change, a function that makes it, and a function that fakes it. In a real run the
// description is logged and the change made; in a dry run "DRY-RUN: would <action>" is
// logged, the write is counted as skipped, and the fake runs instead: it sets the result
// the caller goes on with (a server marked as existing only in the dry run) or asks the
// backend to validate the write without making it (a Kubernetes server-side dry-run). A
// write that has no backend call (a step that would act on a server the dry run only
// imagined) is logged and counted with Gate.Would. So a dry run reads everything for real,
// changes nothing, and its summary counts exactly the "DRY-RUN: would" lines it printed.
package dryrun

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
)

// Gate decides whether writes happen. The zero value and a nil *Gate perform every write
// without logging, which is what small unit tests want.
type Gate struct {
	// DryRun, when true, turns every write into a log line and its fake.
	DryRun bool
	// Log receives one line per write, before it is made. Nil means no logging.
	Log *slog.Logger

	performed atomic.Int64
	skipped   atomic.Int64

	mu    sync.Mutex
	fakes map[string]bool // ids handed out by FakeID
}

// Enabled reports whether g is in dry-run mode.
func (g *Gate) Enabled() bool { return g != nil && g.DryRun }

// Write logs action (a lowercase verb phrase with the concrete values, such as
// "cordon node toolsbeta-test-k8s-worker-3") and returns do(ctx), unless g is in dry-run
// mode: then it logs "DRY-RUN: would <action>", counts the write as skipped and returns
// fake(ctx) (nil if fake is nil: the write has no result to fake). attrs are extra
// key/value pairs for the log line. do must not be nil.
func (g *Gate) Write(ctx context.Context, action string, do, fake func(context.Context) error, attrs ...any) error {
	if g == nil {
		return do(ctx)
	}
	if g.DryRun {
		g.Would(ctx, action, attrs...)
		if fake == nil {
			return nil
		}
		return fake(ctx)
	}
	if g.Log != nil {
		g.Log.InfoContext(ctx, action, attrs...)
	}
	g.performed.Add(1)
	return do(ctx)
}

// Would records, in dry-run mode, a write that is not made and has no backend call to
// pass through Write (a command for a server that exists only in the dry run, an audit
// line): it logs "DRY-RUN: would <action>" and counts the write as skipped. Outside
// dry-run mode it does nothing: callers use it on their dry-run path only.
func (g *Gate) Would(ctx context.Context, action string, attrs ...any) {
	if !g.Enabled() {
		return
	}
	g.skipped.Add(1)
	if g.Log != nil {
		g.Log.InfoContext(ctx, "DRY-RUN: would "+action, attrs...)
	}
}

// FakeID returns the id of something a skipped write would have created (kind "server",
// name "toolsbeta-test-k8s-worker-4") and remembers it, so that IsFake knows later steps
// are looking at something that exists only in this dry run. Use it in a Write's fake.
func (g *Gate) FakeID(kind, name string) string {
	id := "dry-run-" + kind + "-" + name
	if g == nil {
		return id
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fakes == nil {
		g.fakes = map[string]bool{}
	}
	g.fakes[id] = true
	return id
}

// IsFake reports whether id was handed out by FakeID of this gate: the thing it names
// was never created. An id recorded by an earlier real run is never fake.
func (g *Gate) IsFake(id string) bool {
	if g == nil {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fakes[id]
}

// Counts returns how many writes were performed and how many were skipped by dry-run.
func (g *Gate) Counts() (performed, skipped int64) {
	if g == nil {
		return 0, 0
	}
	return g.performed.Load(), g.skipped.Load()
}
