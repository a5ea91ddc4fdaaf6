package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// captureStdout runs fn and returns what it printed.
func captureStdout(t *testing.T, fn func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() { b, _ := io.ReadAll(r); done <- string(b) }()
	fn()
	os.Stdout = old
	w.Close()
	return <-done
}

// The lab prints `cookbook-lab down --dir DIR`: --dir works after the command as well as
// before it.
func TestDirBeforeOrAfterTheCommand(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"cookbook-lab", "down", "--dir", dir},
		{"cookbook-lab", "--dir", dir, "down"},
	} {
		out := captureStdout(t, func() {
			if err := newApp().Run(args); err != nil {
				t.Errorf("%v: %v", args, err)
			}
		})
		if want := "no lab running from " + dir; !strings.Contains(out, want) {
			t.Errorf("%v printed %q, want %q", args, out, want)
		}
	}
	// Without --dir: .lab in the current directory.
	wd, _ := os.Getwd()
	out := captureStdout(t, func() { newApp().Run([]string{"cookbook-lab", "down"}) })
	if want := "no lab running from " + filepath.Join(wd, ".lab"); !strings.Contains(out, want) {
		t.Errorf("default dir: printed %q, want %q", out, want)
	}
}
