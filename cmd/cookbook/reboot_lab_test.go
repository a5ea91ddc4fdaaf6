package main

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"example.com/cookbook/lab/vm"
)

// TestRebootResumeWindows stops a roll-reboot at the two moments of its reboot step that
// the state file cannot tell apart by itself, deterministically: the lab's VM kills the
// cookbook process as `systemctl reboot` arrives, and either drops the command (the run
// stopped after recording the boot id and before the reboot was sent) or runs it (the
// reboot was sent and the run stopped before recording so). Each resume must reboot the
// node exactly once, and not wait out --reboot-timeout for a reboot never sent.
func TestRebootResumeWindows(t *testing.T) {
	w, s := stackWorld(t, 1, 0)
	node := s.Prefix + "-worker-1"
	var nodeVM *vm.VM
	for _, srv := range s.Cloud.Servers() {
		if srv.Name == node {
			nodeVM = s.Fleet.VM(srv.ID)
		}
	}
	if nodeVM == nil {
		t.Fatalf("no VM %s", node)
	}
	reboots := func() int {
		n := 0
		for _, c := range commandsOn(s, node) {
			if strings.HasSuffix(c, "systemctl reboot") {
				n++
			}
		}
		return n
	}
	args := []string{"roll-reboot", "--cluster-name", "toolsbeta", "--hostname-list", node, "--force", "--delete-emptydir-data", "--reboot-timeout", "5m", "--new"}

	for _, tc := range []struct {
		name        string
		send        bool          // whether the VM runs the reboot the killed run sent
		maxResume   time.Duration // the resume's time, well under --reboot-timeout
		wantLogLine string
	}{
		{"stopped before the reboot was sent", false, 75 * time.Second, "reboot not sent before the run stopped (node up on its old boot id); sending it"},
		{"stopped after the reboot was sent", true, 20 * time.Second, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, bootBefore := reboots(), nodeVM.BootID()
			cmd := w.command(args...)
			var out strings.Builder
			cmd.Stderr = &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			killed := make(chan struct{})
			s.Fleet.BeforeCommand(func(v string, a []string) bool {
				if v != node || strings.Join(a, " ") != "systemctl reboot" {
					return false
				}
				s.Fleet.BeforeCommand(nil)
				cmd.Process.Signal(syscall.SIGKILL)
				<-killed // the process is gone before the VM acts on the command
				return !tc.send
			})
			t.Cleanup(func() { s.Fleet.BeforeCommand(nil) })
			var err error
			select {
			case err = <-done:
				close(killed)
			case <-time.After(3 * time.Minute):
				cmd.Process.Kill()
				<-done
				close(killed)
				t.Fatalf("the run neither rebooted nor ended:\n%s", out.String())
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("the run was not killed at the reboot (%v):\n%s", err, out.String())
			}
			id := ""
			for _, r := range w.runs() {
				if r.Status != "done" && r.Status != "abandoned" {
					id = r.ID
				}
			}
			if id == "" {
				t.Fatal("no unfinished run after the kill")
			}
			start := time.Now()
			r := w.run("resume", id)
			took := time.Since(start)
			wantCode(t, r, 0)
			if took > tc.maxResume {
				t.Errorf("resume took %s, want under %s", took.Round(time.Second), tc.maxResume)
			}
			if got := reboots() - before; got != 1 {
				t.Errorf("the VM ran systemctl reboot %d times, want 1", got)
			}
			if nodeVM.BootID() == bootBefore {
				t.Error("the node's boot id did not change")
			}
			if n := nodeOf(t, s, node); n == nil || n.Spec.Unschedulable {
				t.Errorf("node %s missing or still cordoned after the resume", node)
			}
			if tc.wantLogLine != "" && !strings.Contains(r.stderr, tc.wantLogLine) {
				t.Errorf("resume log lacks %q:\n%s", tc.wantLogLine, r.stderr)
			}
			t.Logf("resume took %s", took.Round(100*time.Millisecond))
		})
	}
}
