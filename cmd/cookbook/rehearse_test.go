package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"example.com/cookbook/cookbooks/state"
)

// snapshot returns every file under dir with its mode, size, modification time and (for
// regular files) content, to show that a command changed nothing there. A FIFO is
// recorded, never opened.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		var data []byte
		if info.Mode().IsRegular() {
			data, _ = os.ReadFile(path)
		}
		out[path] = fmt.Sprintf("%s %d %s %s", info.Mode(), info.Size(), info.ModTime(), data)
		return nil
	})
	return out
}

func sameFiles(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	for p, v := range after {
		if before[p] != v {
			t.Errorf("%s changed or created %s", what, p)
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			t.Errorf("%s removed %s", what, p)
		}
	}
}

// TestDryRunResumeAndAbandonRehearse: `--dry-run resume` and `--dry-run abandon` (the
// switch before or after the command) rehearse: every write is logged as DRY-RUN, none
// is made, the run file and log are untouched and no lock is taken.
func TestDryRunResumeAndAbandonRehearse(t *testing.T) {
	w := newWorld(t)
	breakFile := filepath.Join(w.dir, "break-item-3")
	os.WriteFile(breakFile, nil, 0o600)
	wantCode(t, w.run(w.toy()...), 1)
	id := w.runs()[0].ID
	os.Remove(breakFile)
	markers := w.markers()
	if len(markers) != 2 {
		t.Fatalf("markers after the failed run: %v", markers)
	}
	for _, args := range [][]string{{"--dry-run", "resume", id}, {"-d", "resume", id}, {"resume", "--dry-run", id}} {
		before := snapshot(t, w.stateDir)
		r := w.run(args...)
		wantCode(t, r, 0)
		sameFiles(t, strings.Join(args, " "), before, snapshot(t, w.stateDir))
		if got := w.markers(); len(got) != 2 {
			t.Errorf("%v created markers: %v", args, got)
		}
		if _, err := os.Stat(filepath.Join(w.dir, "result")); err == nil {
			t.Fatalf("%v wrote the result", args)
		}
		for _, want := range []string{"DRY-RUN: rehearsing the resume of run " + id, "DRY-RUN: would create marker item-3", "DRY-RUN: would create marker item-4", "DRY-RUN: would write result", "nothing was changed"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("%v: output lacks %q:\n%s", args, want, r.stderr)
			}
		}
		if strings.Contains(r.stderr, "would create marker item-1") {
			t.Errorf("%v rehearses a step the run has done:\n%s", args, r.stderr)
		}
		wantSkippedCounted(t, strings.Join(args, " "), r)
	}

	// While another process holds the cluster's lock, a rehearsal still runs: it takes none.
	before := snapshot(t, w.stateDir)
	for _, args := range [][]string{{"--dry-run", "abandon", id}, {"abandon", "-d", id}} {
		r := w.run(args...)
		wantCode(t, r, 0)
		for _, want := range []string{"DRY-RUN: would remove marker item-2", "DRY-RUN: would remove marker item-1", "abandon would undo 3 step(s)", "item-3/mark, item-2/mark, item-1/mark"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("%v: output lacks %q:\n%s", args, want, r.stderr)
			}
		}
		wantSkippedCounted(t, strings.Join(args, " "), r)
	}
	sameFiles(t, "dry-run abandon", before, snapshot(t, w.stateDir))
	if got := w.markers(); len(got) != 2 {
		t.Errorf("dry-run abandon removed markers: %v", got)
	}
	if run := w.runs()[0]; run.Status != state.Failed {
		t.Errorf("run after the rehearsals: %s, want failed", run.Status)
	}
	// The real resume still works and finishes the run.
	wantCode(t, w.run("resume", id), 0)
	if got := w.markers(); len(got) != 4 {
		t.Errorf("markers after the resume: %v", got)
	}
}

// TestRehearsalTakesNoLock: a dry-run resume runs while a real run holds the lock.
func TestRehearsalTakesNoLock(t *testing.T) {
	w := newWorld(t)
	breakFile := filepath.Join(w.dir, "break-item-2")
	os.WriteFile(breakFile, nil, 0o600)
	wantCode(t, w.run(w.toy()...), 1)
	id := w.runs()[0].ID
	hold := filepath.Join(w.dir, "hold")
	os.WriteFile(hold, nil, 0o600)
	a := w.command(w.toy("--new")...)
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { a.Process.Kill(); a.Wait() }()
	w.waitFor(func(r *state.Run) bool { return r.ID != id && r.Status == state.Running })
	r := w.run("--dry-run", "resume", id)
	if r.code != 1 || !strings.Contains(r.stderr, "break-item-2 exists") || strings.Contains(r.stderr, "locked") {
		t.Fatalf("dry-run resume while locked: code %d\n%s", r.code, r.stderr)
	}
	if run, _ := (&state.Store{Dir: w.stateDir}).Load(id); run.Status != state.Failed || run.Step("item-2/mark").Attempts != 1 {
		t.Errorf("the failed rehearsal changed the run: %s, attempts %d", run.Status, run.Step("item-2/mark").Attempts)
	}
	os.Remove(hold)
}

// TestRepeatedHangupsStopCleanly: a closed terminal delivers SIGHUP more than once, and a
// SIGTERM may follow; all of it is one request to stop: the run is saved as interrupted
// and the process exits 130 (it does not "exit at once" on the second signal).
func TestRepeatedHangupsStopCleanly(t *testing.T) {
	for _, tc := range []struct {
		name string
		sigs []syscall.Signal
	}{
		{"hup-hup-hup", []syscall.Signal{syscall.SIGHUP, syscall.SIGHUP, syscall.SIGHUP}},
		{"hup-term", []syscall.Signal{syscall.SIGHUP, syscall.SIGTERM}},
		{"term-term", []syscall.Signal{syscall.SIGTERM, syscall.SIGTERM}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			// The step takes a while to stop, as a drain or an SSH command does: the
			// later signals arrive while it is being stopped.
			os.WriteFile(filepath.Join(w.dir, "hold"), nil, 0o600)
			cmd := w.command(w.toy("--stop-time", "300ms")...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			w.waitFor(func(r *state.Run) bool {
				s := r.Step("item-1/mark")
				return s != nil && s.Status == state.Running
			})
			for _, s := range tc.sigs {
				cmd.Process.Signal(s)
			}
			err := cmd.Wait()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
				t.Fatalf("exit %v, want 130; stderr:\n%s", err, stderr.String())
			}
			run := w.runs()[0]
			if run.Status != state.Interrupted || run.Step("item-1/mark").Status != state.Interrupted {
				t.Fatalf("run after %s: %s, step %+v\n%s", tc.name, run.Status, run.Step("item-1/mark"), stderr.String())
			}
			if strings.Contains(stderr.String(), "exiting now") {
				t.Errorf("a repeated hangup exited at once:\n%s", stderr.String())
			}
		})
	}
	// Two SIGINTs (Ctrl-C twice): the second exits at once.
	w := newWorld(t)
	os.WriteFile(filepath.Join(w.dir, "hold"), nil, 0o600)
	cmd := w.command(w.toy("--step-time", "1h")...)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	w.waitFor(func(r *state.Run) bool { s := r.Step("item-1/mark"); return s != nil && s.Status == state.Running })
	cmd.Process.Signal(syscall.SIGINT)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), "press Ctrl-C again") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
		t.Fatalf("exit %v, want 130; stderr:\n%s", err, stderr.String())
	}
}

// TestResumeReplaysEveryFlagType: a resumed run gets exactly the flags it was started
// with, of every type the cookbooks use: string, int, duration, bool and a list given
// several times (a value with a space included).
func TestResumeReplaysEveryFlagType(t *testing.T) {
	w := newWorld(t)
	os.WriteFile(filepath.Join(w.dir, "break-finish"), nil, 0o600)
	wantCode(t, w.run(w.toy("--items", "2", "--step-time", "1ms", "--confirm", "--yes", "--tag", "a", "--tag", "b c,d")...), 1)
	run := w.runs()[0]
	if got := run.Args["tag"]; got != `["a","b c","d"]` { // urfave/cli splits a value on commas
		t.Errorf("recorded --tag = %s", got)
	}
	os.Remove(filepath.Join(w.dir, "break-finish"))
	wantCode(t, w.run("resume", run.ID), 0)
	tags, _ := os.ReadFile(filepath.Join(w.dir, "tags"))
	if string(tags) != "a|b c|d" {
		t.Errorf("the resumed run's --tag values: %q, want a|b c|d", tags)
	}
	if got := w.markers(); len(got) != 2 {
		t.Errorf("--items 2 replayed as %d markers", len(got))
	}
	done := w.runs()[0]
	for _, k := range []string{"items", "step-time", "confirm", "cluster-name", "dir"} {
		if done.Args[k] != run.Args[k] {
			t.Errorf("--%s: %q after resume, %q before", k, done.Args[k], run.Args[k])
		}
	}
	if run.Args["step-time"] != "1ms" || run.Args["confirm"] != "true" || run.Args["items"] != "2" {
		t.Errorf("recorded args: %v", run.Args)
	}
}
