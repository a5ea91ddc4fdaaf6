package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"example.com/cookbook/cookbooks/state"
)

// needTool returns the path of a Debian tool a test drives, skipping the test without it
// (failing under CI=true, where .ci/run installs it).
func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found: CI installs Debian's %s", name, pkg)
		}
		t.Skipf("%s not found (Debian's %s): skipping", name, pkg)
	}
	return p
}

// alive reports whether process pid exists and is not a zombie.
func alive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// TestTmuxKillSession runs a cookbook the way operators do, as a foreground job of an
// interactive shell in a tmux window, and closes the session mid-step: the terminal's
// hangup and the shell's forwarding deliver SIGHUP more than once; the run must still be
// saved as interrupted, with the log saying so, and be resumable.
func TestTmuxKillSession(t *testing.T) {
	tmux := needTool(t, "tmux", "tmux")
	bash := needTool(t, "bash", "bash")
	w := newWorld(t)
	os.WriteFile(filepath.Join(w.dir, "hold"), nil, 0o600)
	sock := filepath.Join(t.TempDir(), "tmux")
	tm := func(args ...string) error {
		cmd := exec.Command(tmux, append([]string{"-S", sock, "-f", "/dev/null"}, args...)...)
		cmd.Env = append(os.Environ(), "TMUX=")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return &exec.Error{Name: strings.Join(args, " ") + ": " + out.String(), Err: err}
		}
		return nil
	}
	t.Cleanup(func() { tm("kill-server") })
	if err := tm("new-session", "-d", "-s", "cookbook", "-x", "200", "-y", "50", bash+" --norc --noprofile -i"); err != nil {
		t.Fatal(err)
	}
	line := "COOKBOOK_TEST_CHILD=1 " + strings.Join([]string{os.Args[0], "--config", w.config, "--state-dir", w.stateDir, "toy", "--cluster-name", "lab1", "--dir", w.dir, "--stop-time", "500ms"}, " ")
	if err := tm("send-keys", "-t", "cookbook", line, "Enter"); err != nil {
		t.Fatal(err)
	}
	run := w.waitFor(func(r *state.Run) bool {
		s := r.Step("item-1/mark")
		return s != nil && s.Status == state.Running
	})
	pid := run.Holder.PID
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	if err := tm("kill-session", "-t", "cookbook"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("cookbook (pid %d) still running 30s after its tmux session was killed", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	run = w.runs()[0]
	if run.Status != state.Interrupted || run.Step("item-1/mark").Status != state.Interrupted {
		t.Fatalf("run after kill-session: %s, step %+v", run.Status, run.Step("item-1/mark"))
	}
	log, _ := os.ReadFile((&state.Store{Dir: w.stateDir}).LogPath(run.ID))
	if !strings.Contains(string(log), "interrupted") {
		t.Errorf("the run's log does not end with the interruption:\n%s", log)
	}
	os.Remove(filepath.Join(w.dir, "hold"))
	wantCode(t, w.run("resume", run.ID), 0)
	if got := w.markers(); len(got) != 4 {
		t.Errorf("markers after resume: %v", got)
	}
}
