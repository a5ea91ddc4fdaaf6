package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"example.com/cookbook/cookbooks/state"
)

// openPTY returns both ends of a new pseudo-terminal: what an operator's terminal is to
// cookbook's stdin.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal here (%v): the interactive prompts are not tested", err)
	}
	t.Cleanup(func() { master.Close() })
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	t.Cleanup(func() { tty.Close() })
	// Drain what the terminal echoes, as a terminal emulator would.
	go func() {
		buf := make([]byte, 1024)
		for {
			if _, err := master.Read(buf); err != nil {
				return
			}
		}
	}()
	return master, tty
}

// syncBuffer is a strings.Builder safe for the child's writes and the test's reads.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// interactive runs cookbook with a terminal as stdin; each time stderr shows the next
// prompt, before runs and answer is typed. It returns the exit code and stderr.
func (w *world) interactive(t *testing.T, dialog []answer, args ...string) (int, string) {
	t.Helper()
	master, tty := openPTY(t)
	cmd := w.command(args...)
	cmd.Stdin = tty
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	read := 0 // how much of stderr the questions answered so far took
	for _, a := range dialog {
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(stderr.String()[read:], a.prompt) {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				<-done
				t.Fatalf("no prompt %q; stderr:\n%s", a.prompt, stderr.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
		out := stderr.String()
		read += strings.Index(out[read:], a.prompt) + len(a.prompt)
		if a.before != nil {
			a.before()
		}
		if _, err := master.WriteString(a.text + "\n"); err != nil {
			t.Fatal(err)
		}
	}
	err := <-done
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stderr.String()
}

type answer struct {
	prompt string // text that shows the question is asked
	before func() // what the operator does before answering
	text   string
}

const failurePrompt = "[r]etry, [s]kip this step, or [a]bort (resumable)?"

func TestInteractiveRetry(t *testing.T) {
	w := newWorld(t)
	broken := filepath.Join(w.dir, "break-item-2")
	os.WriteFile(broken, nil, 0o600)
	// The first retry fails again; the operator then fixes the cause and retries.
	code, stderr := w.interactive(t, []answer{
		{prompt: failurePrompt, text: "r"},
		{prompt: failurePrompt, text: "retry", before: func() { os.Remove(broken) }},
	}, w.toy()...)
	if code != 0 {
		t.Fatalf("exit %d after retry:\n%s", code, stderr)
	}
	if !strings.Contains(stderr, "FAILED step item-2/mark: item-2 is broken (break-item-2 exists)\n") {
		t.Errorf("the prompt does not say what failed:\n%s", stderr)
	}
	run := w.runs()[0]
	if run.Status != state.Done || run.Step("item-2/mark").Attempts != 3 || len(w.markers()) != 4 {
		t.Errorf("run %s: item-2 attempts %d, markers %v", run.Status, run.Step("item-2/mark").Attempts, w.markers())
	}
}

func TestInteractiveSkip(t *testing.T) {
	w := newWorld(t)
	os.WriteFile(filepath.Join(w.dir, "break-item-3"), nil, 0o600)
	code, stderr := w.interactive(t, []answer{{prompt: failurePrompt, text: "s"}}, w.toy()...)
	if code != 0 {
		t.Fatalf("exit %d after skip:\n%s", code, stderr)
	}
	run := w.runs()[0]
	if run.Status != state.Done || run.Step("item-3/mark").Status != state.Skipped {
		t.Errorf("run %s, item-3 %s", run.Status, run.Step("item-3/mark").Status)
	}
	if got := strings.Join(w.markers(), " "); got != "marker-item-1 marker-item-2 marker-item-4" {
		t.Errorf("markers = %s", got)
	}
}

func TestInteractiveAbortIsResumable(t *testing.T) {
	w := newWorld(t)
	broken := filepath.Join(w.dir, "break-item-3")
	os.WriteFile(broken, nil, 0o600)
	code, stderr := w.interactive(t, []answer{{prompt: failurePrompt, text: "a"}}, w.toy()...)
	if code != 1 {
		t.Fatalf("exit %d after abort, want 1:\n%s", code, stderr)
	}
	run := w.runs()[0]
	if run.Status != state.Failed || run.Step("item-3/mark").Status != state.Failed || len(w.markers()) != 2 {
		t.Fatalf("run %s, item-3 %s, markers %v", run.Status, run.Step("item-3/mark").Status, w.markers())
	}
	if !strings.Contains(stderr, "cookbook resume "+run.ID) {
		t.Errorf("abort does not say how to resume:\n%s", stderr)
	}
	os.Remove(broken)
	wantCode(t, w.run("resume", run.ID), 0)
	if len(w.markers()) != 4 {
		t.Errorf("markers after resume: %v", w.markers())
	}
}

func TestInteractiveConfirmation(t *testing.T) {
	w := newWorld(t)
	code, stderr := w.interactive(t, []answer{{prompt: "Really create markers in " + w.dir + "? [y/N]", text: "n"}}, w.toy("--confirm")...)
	if code != 2 || len(w.markers()) != 0 || len(w.runs()) != 0 {
		t.Fatalf("answered no: exit %d, markers %v, runs %d:\n%s", code, w.markers(), len(w.runs()), stderr)
	}
	code, stderr = w.interactive(t, []answer{{prompt: "[y/N]", text: "y"}}, w.toy("--confirm")...)
	if code != 0 || len(w.markers()) != 4 {
		t.Fatalf("answered yes: exit %d, markers %v:\n%s", code, w.markers(), stderr)
	}
}
