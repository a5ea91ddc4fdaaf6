package dryrun

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
)

func TestGate(t *testing.T) {
	tests := []struct {
		name     string
		dryRun   bool
		wantCall bool
		wantLog  string
	}{
		{name: "real run performs and logs", dryRun: false, wantCall: true, wantLog: `msg="cordon node n1"`},
		{name: "dry run only logs", dryRun: true, wantCall: false, wantLog: `msg="DRY-RUN: would cordon node n1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			g := &Gate{DryRun: tt.dryRun, Log: slog.New(slog.NewTextHandler(&buf, nil))}
			called := false
			err := g.Write(context.Background(), "cordon node n1", func(context.Context) error { called = true; return nil })
			if err != nil {
				t.Fatal(err)
			}
			if called != tt.wantCall {
				t.Errorf("called = %v, want %v", called, tt.wantCall)
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

func TestNilGatePerforms(t *testing.T) {
	var g *Gate
	called := false
	_ = g.Write(context.Background(), "x", func(context.Context) error { called = true; return nil })
	if !called || g.Enabled() {
		t.Fatal("nil gate must perform writes and not be in dry-run")
	}
}
