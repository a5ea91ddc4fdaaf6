package dryrun

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestGate(t *testing.T) {
	tests := []struct {
		name     string
		dryRun   bool
		wantCall string // which function ran: "do" or "fake"
		wantLog  string
	}{
		{name: "real run performs and logs", dryRun: false, wantCall: "do", wantLog: `msg="cordon node n1"`},
		{name: "dry run logs and fakes", dryRun: true, wantCall: "fake", wantLog: `msg="DRY-RUN: would cordon node n1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			g := &Gate{DryRun: tt.dryRun, Log: slog.New(slog.NewTextHandler(&buf, nil))}
			var called string
			err := g.Write(context.Background(), "cordon node n1",
				func(context.Context) error { called += "do"; return nil },
				func(context.Context) error { called += "fake"; return nil })
			if err != nil {
				t.Fatal(err)
			}
			if called != tt.wantCall {
				t.Errorf("called %q, want %q", called, tt.wantCall)
			}
			if !strings.Contains(buf.String(), tt.wantLog) {
				t.Errorf("log %q does not contain %q", buf.String(), tt.wantLog)
			}
			p, s := g.Counts()
			if tt.dryRun && (p != 0 || s != 1) || !tt.dryRun && (p != 1 || s != 0) {
				t.Errorf("counts = %d performed, %d skipped", p, s)
			}
			if g.Enabled() != tt.dryRun {
				t.Errorf("Enabled() = %v", g.Enabled())
			}
		})
	}
}

func TestFakeErrorIsReturned(t *testing.T) {
	g := &Gate{DryRun: true}
	refused := errors.New("forbidden")
	err := g.Write(context.Background(), "delete node n1", func(context.Context) error { return nil }, func(context.Context) error { return refused })
	if !errors.Is(err, refused) {
		t.Fatalf("Write = %v, want the fake's error", err)
	}
	if err := g.Write(context.Background(), "x", func(context.Context) error { return errors.New("done") }, nil); err != nil {
		t.Fatalf("a dry-run write without a fake = %v, want nil", err)
	}
}

// TestWouldCountsWhatItLogs: every "DRY-RUN: would" line is a skipped write.
func TestWouldCountsWhatItLogs(t *testing.T) {
	var buf bytes.Buffer
	g := &Gate{DryRun: true, Log: slog.New(slog.NewTextHandler(&buf, nil))}
	ctx := context.Background()
	g.Would(ctx, "run on the new node: apt-get install -y nfs-common")
	g.Would(ctx, "send audit line: hello")
	_ = g.Write(ctx, "create server n1", func(context.Context) error { return nil }, nil)
	_, skipped := g.Counts()
	if lines := strings.Count(buf.String(), "DRY-RUN: would "); int64(lines) != skipped || skipped != 3 {
		t.Errorf("%d DRY-RUN lines, %d counted as skipped; want 3 and 3:\n%s", lines, skipped, buf.String())
	}
	real := &Gate{Log: slog.New(slog.NewTextHandler(&buf, nil))}
	buf.Reset()
	real.Would(ctx, "anything")
	if p, s := real.Counts(); buf.Len() != 0 || p != 0 || s != 0 {
		t.Errorf("Would outside dry-run logged %q, counted %d/%d; want nothing", buf.String(), p, s)
	}
}

func TestFakeIDs(t *testing.T) {
	g := &Gate{DryRun: true}
	id := g.FakeID("server", "w-4")
	if !g.IsFake(id) {
		t.Errorf("IsFake(%q) = false for an id the gate handed out", id)
	}
	if (&Gate{DryRun: true}).IsFake(id) || g.IsFake("0b8e0c62-1d4e-4bb1-9a43-5c2e8a0f7d11") {
		t.Error("an id this gate did not hand out is fake")
	}
	var nilGate *Gate
	if nilGate.IsFake(nilGate.FakeID("server", "w-4")) {
		t.Error("a nil gate remembers fakes")
	}
}

func TestNilGatePerforms(t *testing.T) {
	var g *Gate
	called := false
	_ = g.Write(context.Background(), "x", func(context.Context) error { called = true; return nil }, nil)
	if !called || g.Enabled() {
		t.Fatal("nil gate must perform writes and not be in dry-run")
	}
	g.Would(context.Background(), "x") // no panic
}
