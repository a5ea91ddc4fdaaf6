package main

import (
	"context"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/lab/stack"
)

// writes is what the lab recorded of the world's changes: the cloud's write count, the
// API server's write requests by cookbook and the commands the VMs ran.
type writes struct {
	s       *stack.Stack
	since   time.Time
	cloud   int
	history int
}

func markWrites(s *stack.Stack) writes {
	time.Sleep(10 * time.Millisecond) // audit events carry the time their request arrived
	return writes{s: s, since: time.Now(), cloud: s.Cloud.TotalWrites(), history: len(s.Fleet.History())}
}

// none fails the test if anything was written since the mark: a cloud write, an API
// write by cookbook, or a command on a VM that changes it. Reads (hostname, boot id,
// blkid, test -e, cat /etc/fstab) are fine.
func (m writes) none(t *testing.T, what string) {
	t.Helper()
	if n := m.s.Cloud.TotalWrites() - m.cloud; n != 0 {
		t.Errorf("%s: %d cloud writes", what, n)
	}
	time.Sleep(time.Second) // the audit log is written asynchronously
	evs, err := m.s.CP.WriteRequests(context.Background(), m.since, "cookbook")
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 0 {
		t.Errorf("%s: %d API writes: %+v", what, len(evs), evs)
	}
	reads := []string{"hostname", "cat /proc/sys/kernel/random/boot_id", "blkid ", "test -e ", "cat /etc/fstab", "apt-cache madison ", "dpkg-query -W ", "apt-mark showhold"}
	for _, r := range m.s.Fleet.History()[m.history:] {
		cmd := strings.TrimPrefix(strings.Join(r.Argv, " "), "sudo -n -- ")
		read := false
		for _, p := range reads {
			read = read || strings.HasPrefix(cmd, p)
		}
		// etcdctl's reads (the etcd checks of control-node changes).
		read = read || strings.HasPrefix(cmd, "etcdctl ") && (strings.HasSuffix(cmd, " member list -w json") || strings.HasSuffix(cmd, " endpoint health --cluster -w json"))
		if !read {
			t.Errorf("%s: %s ran %q", what, r.VM, cmd)
		}
	}
}

// TestRehearsedResumeAndAbandonInTheLab: `--dry-run resume` of an interrupted
// add-k8s-node and `--dry-run abandon|resume` of a failed roll-reboot read the cloud, the
// cluster and the VMs for real and write nothing anywhere: no cloud write, no API write,
// no command that changes a VM, the state dir untouched. The real resume then ends as an
// uninterrupted run would.
func TestRehearsedResumeAndAbandonInTheLab(t *testing.T) {
	w, s := stackWorld(t, 1, 0)
	prefix := s.Prefix
	newNode := prefix + "-worker-2"

	// An add-k8s-node interrupted once its server exists.
	cmd := w.command("add-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker")
	var out syncBuffer
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	run := w.waitFor(func(r *state.Run) bool {
		s := r.Step("create-server")
		return s != nil && s.Status == state.Done
	})
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err == nil {
		t.Fatalf("add-k8s-node finished before it was interrupted:\n%s", out.String())
	} else if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
		t.Fatalf("interrupted add-k8s-node: %v\n%s", err, out.String())
	}
	if run = w.runs()[0]; run.Status != state.Interrupted {
		t.Fatalf("run %s after SIGTERM: %s", run.ID, run.Status)
	}

	files := snapshot(t, w.stateDir)
	m := markWrites(s)
	r := w.run("--dry-run", "resume", run.ID)
	wantCode(t, r, 0)
	m.none(t, "dry-run resume of add-k8s-node")
	sameFiles(t, "dry-run resume of add-k8s-node", files, snapshot(t, w.stateDir))
	for _, want := range []string{"DRY-RUN: rehearsing the resume of run " + run.ID, "DRY-RUN: would run on ", "apt-get", "DRY-RUN: would get a join command from a control node and run kubeadm join on " + newNode, "nothing was changed"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("dry-run resume output lacks %q:\n%s", want, r.stderr)
		}
	}
	if nodeOf(t, s, newNode) != nil {
		t.Fatalf("the rehearsal joined %s", newNode)
	}
	wantSkippedCounted(t, "dry-run resume of add-k8s-node", r)

	// The real resume adds the node, on the server the interrupted run created.
	servers := len(s.Cloud.Servers())
	wantCode(t, w.run("resume", run.ID), 0)
	if n := nodeOf(t, s, newNode); n == nil || len(s.Cloud.Servers()) != servers {
		t.Fatalf("after the resume: node %s = %v, %d servers (was %d)", newNode, n != nil, len(s.Cloud.Servers()), servers)
	}

	// A roll-reboot that failed at its drain (a bare pod, no --force), its node cordoned.
	node := prefix + "-worker-1"
	bare := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "bare", Namespace: "sample"}, Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "pause"}}}}
	if _, err := s.CP.Client.CoreV1().Pods("sample").Create(context.Background(), bare, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r = w.run("roll-reboot", "--cluster-name", "toolsbeta", "--hostname-list", node)
	wantCode(t, r, 1)
	roll := w.runs()[0]
	if n := nodeOf(t, s, node); n == nil || !n.Spec.Unschedulable {
		t.Fatalf("roll-reboot did not cordon %s:\n%s", node, r.stderr)
	}
	files = snapshot(t, w.stateDir)
	m = markWrites(s)
	r = w.run("--dry-run", "abandon", roll.ID)
	wantCode(t, r, 0)
	for _, want := range []string{"DRY-RUN: would uncordon node " + node, "abandon would undo", "nothing was changed"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("dry-run abandon output lacks %q:\n%s", want, r.stderr)
		}
	}
	r = w.run("resume", "--dry-run", roll.ID)
	if r.code != 1 || !strings.Contains(r.stderr, "--force") {
		t.Errorf("dry-run resume of the blocked drain: code %d (want 1: the drain would still be refused)\n%s", r.code, r.stderr)
	}
	m.none(t, "dry-run abandon and resume of roll-reboot")
	sameFiles(t, "dry-run abandon and resume of roll-reboot", files, snapshot(t, w.stateDir))
	if !nodeOf(t, s, node).Spec.Unschedulable {
		t.Errorf("the rehearsed abandon uncordoned %s", node)
	}
	wantCode(t, w.run("abandon", roll.ID), 0)
	if nodeOf(t, s, node).Spec.Unschedulable {
		t.Errorf("the real abandon left %s cordoned", node)
	}
}
