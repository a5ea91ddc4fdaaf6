package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/lab/cloud"
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

// TestPrintNodes: status shows each node's image (from its server), Ready, cordoned, boot
// id and running pods; a server without a node and a node without a server say so.
func TestPrintNodes(t *testing.T) {
	ready := corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}, NodeInfo: corev1.NodeSystemInfo{BootID: "0123456789abcdef"}}
	nodes := []corev1.Node{
		{ObjectMeta: metav1.ObjectMeta{Name: "tb-worker-1"}, Spec: corev1.NodeSpec{Unschedulable: true}, Status: ready},
		{ObjectMeta: metav1.ObjectMeta{Name: "tb-worker-3"}, Status: ready},
		{ObjectMeta: metav1.ObjectMeta{Name: "tb-worker-9"}},
	}
	pods := []corev1.Pod{
		{Spec: corev1.PodSpec{NodeName: "tb-worker-3"}, Status: corev1.PodStatus{Phase: corev1.PodRunning}},
		{Spec: corev1.PodSpec{NodeName: "tb-worker-3"}, Status: corev1.PodStatus{Phase: corev1.PodPending}},
	}
	servers := []cloud.ServerSummary{{Name: "tb-worker-1", Status: "ACTIVE", Image: "debian-12.0-bookworm"},
		{Name: "tb-worker-3", Status: "ACTIVE", Image: "debian-13.0-trixie"}, {Name: "tb-worker-4", Status: "BUILD", Image: "debian-13.0-trixie"}}
	var b strings.Builder
	printNodes(&b, nodes, pods, servers)
	want := `NODE         IMAGE                 STATUS                   SCHEDULING   BOOT ID   RUNNING PODS
tb-worker-1  debian-12.0-bookworm  Ready                    cordoned     01234567  0
tb-worker-3  debian-13.0-trixie    Ready                    schedulable  01234567  1
tb-worker-9  (no server)           NotReady                 schedulable            0
tb-worker-4  debian-13.0-trixie    (no node; server BUILD)  -            -         -
`
	if b.String() != want {
		t.Errorf("status:\n%s\nwant:\n%s", b.String(), want)
	}
}

// TestUpExternalEtcdNegative: a negative --external-etcd is refused before anything starts.
func TestUpExternalEtcdNegative(t *testing.T) {
	dir := t.TempDir()
	err := newApp().Run([]string{"cookbook-lab", "up", "--dir", dir, "--external-etcd", "-1"})
	if want := "--external-etcd: -1 is negative (expected a number of etcd VMs, or 0 for kubeadm's stacked etcd)"; err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("the refused up wrote %d file(s) in %s", len(entries), dir)
	}
}
