package audit

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSinks(t *testing.T) {
	dir := t.TempDir()
	piped := filepath.Join(dir, "piped")
	file := filepath.Join(dir, "audit.log")
	var logs bytes.Buffer
	s := &Sink{Command: []string{"sh", "-c", "cat >> " + piped}, File: file, Log: slog.New(slog.NewTextHandler(&logs, nil))}
	s.Send(context.Background(), "Added a new k8s worker w-7 to the cluster")
	got, _ := os.ReadFile(piped)
	if string(got) != "Added a new k8s worker w-7 to the cluster\n" {
		t.Errorf("command got %q", got)
	}
	got, _ = os.ReadFile(file)
	if !strings.HasSuffix(string(got), " Added a new k8s worker w-7 to the cluster\n") {
		t.Errorf("file got %q", got)
	}
	if strings.Contains(logs.String(), "WARN") {
		t.Errorf("unexpected warning: %s", logs.String())
	}
}

func TestFailingSinkIsAWarning(t *testing.T) {
	var logs bytes.Buffer
	s := &Sink{Command: []string{"false"}, File: "/nonexistent/dir/audit.log", Log: slog.New(slog.NewTextHandler(&logs, nil))}
	s.Send(context.Background(), "line")
	if n := strings.Count(logs.String(), "level=WARN"); n != 2 {
		t.Errorf("want 2 warnings, got:\n%s", logs.String())
	}
	var none *Sink
	none.Send(context.Background(), "dry-runs send nothing") // must not panic
}
