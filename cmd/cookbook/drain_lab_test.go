package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/lab"
)

// labWorld is a world whose cluster lab1 is the lab control plane.
func labWorld(t testing.TB) *world {
	t.Helper()
	lab.Need(t, cp)
	w := newWorld(t)
	cfg := strings.Replace(toyConfig, "ssh: {user: root}", fmt.Sprintf("ssh: {user: root}\n    kubernetes: {kubeconfig: %s}", cp.Kubeconfig), 1)
	if err := os.WriteFile(w.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return w
}

func labNodes(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := cp.AddNode(context.Background(), lab.NodeSpec{Name: n}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cp.RemoveNode(context.Background(), n) })
	}
}

func cordoned(t *testing.T, node string) bool {
	t.Helper()
	n, err := cp.Client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n.Spec.Unschedulable
}

func nonDaemonPodsOn(t *testing.T, node string) []string {
	t.Helper()
	pods, err := cp.Client.CoreV1().Pods("").List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && (len(p.OwnerReferences) == 0 || p.OwnerReferences[0].Kind != "DaemonSet") {
			out = append(out, p.Namespace+"/"+p.Name)
		}
	}
	return out
}

func waitRunning(t *testing.T, ns string, want int) {
	t.Helper()
	if err := cp.WaitPodsRunning(context.Background(), ns, want, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
}

func TestDrainCookbook(t *testing.T) {
	w := labWorld(t)
	labNodes(t, "cb-drain-1", "cb-drain-2")
	ctx := context.Background()
	if err := cp.ApplySampleWorkload(ctx, "cb-drain"); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, "cb-drain", 13)

	// Dry-run: every read, no write.
	since := time.Now()
	r := w.run("--dry-run", "drain", "--cluster-name", "lab1", "--hostname-to-drain", "cb-drain-1", "--force", "--delete-emptydir-data")
	wantCode(t, r, 0)
	for _, want := range []string{"DRY-RUN: would cordon node cb-drain-1", "DRY-RUN: would evict", "stays: ignoring DaemonSet-managed Pods"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("dry-run output lacks %q:\n%s", want, r.stderr)
		}
	}
	wantSkippedCounted(t, "dry-run drain", r)
	time.Sleep(time.Second)
	if writes, _ := cp.WriteRequests(ctx, since, "cookbook"); len(writes) != 0 {
		t.Errorf("dry-run made %d writes: %+v", len(writes), writes)
	}
	if cordoned(t, "cb-drain-1") {
		t.Fatal("dry-run cordoned the node")
	}

	// Unknown node: bad input, nothing changed.
	r = w.run("drain", "--cluster-name", "lab1", "--hostname-to-drain", "cb-drain-9")
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "no node cb-drain-9 in the cluster") || len(w.runs()) != 0 {
		t.Errorf("unknown node: %s", r.stderr)
	}

	r = w.run("drain", "--cluster-name", "lab1", "--hostname-to-drain", "cb-drain-1", "--force", "--delete-emptydir-data")
	wantCode(t, r, 0)
	if !cordoned(t, "cb-drain-1") {
		t.Error("node not cordoned")
	}
	if left := nonDaemonPodsOn(t, "cb-drain-1"); len(left) != 0 {
		t.Errorf("pods left on the node: %v", left)
	}
	run := w.runs()[0]
	if run.Status != state.Done || run.Step("cb-drain-1/drain").Status != state.Done {
		t.Errorf("run: %+v", run)
	}

	// uncordon cookbook.
	wantCode(t, w.run("uncordon", "--cluster-name", "lab1", "--hostname", "cb-drain-1"), 0)
	if cordoned(t, "cb-drain-1") {
		t.Error("uncordon left the node cordoned")
	}
}

// TestDrainKilledMidDrainResumes kills the drain cookbook while a PDB blocks its drain,
// then resumes it once the PDB allows it: the run ends done, the node drained.
func TestDrainKilledMidDrainResumes(t *testing.T) {
	w := labWorld(t)
	labNodes(t, "cb-kill-1")
	ctx := context.Background()
	ns := "cb-kill"
	cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if _, err := cp.Client.AppsV1().Deployments(ns).Create(ctx, lab.Deployment(ns, "solo", 1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	one := intstr.FromInt32(1)
	if _, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, lab.PDB(ns, "solo", nil, &one), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, ns, 1)

	cmd := w.command("drain", "--cluster-name", "lab1", "--hostname-to-drain", "cb-kill-1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	run := w.waitFor(func(r *state.Run) bool {
		s := r.Step("cb-kill-1/drain")
		return s != nil && s.Status == state.Running
	})
	time.Sleep(500 * time.Millisecond) // inside the drain, blocked by the PDB
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	// What an operator sees: the run is not running any more.
	r := w.run("runs")
	if !strings.Contains(r.stdout, "stopped (process gone)") {
		t.Errorf("runs after kill -9:\n%s", r.stdout)
	}
	// Another drain on the cluster is refused while this one is unfinished.
	wantCode(t, w.run("drain", "--cluster-name", "lab1", "--hostname-to-drain", "cb-kill-1"), 2)

	if err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Delete(ctx, "solo", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	r = w.run("resume", run.ID)
	wantCode(t, r, 0)
	if left := nonDaemonPodsOn(t, "cb-kill-1"); len(left) != 0 {
		t.Errorf("pods left: %v", left)
	}
	final := w.runs()[0]
	if final.Step("cb-kill-1/cordon").Attempts != 1 || final.Status != state.Done {
		t.Errorf("cordon ran %d times; run %s", final.Step("cb-kill-1/cordon").Attempts, final.Status)
	}
}

// TestAbandonUncordonsOnlyWhatTheRunCordoned: a drain that failed on an admin-cordoned
// node leaves it cordoned when abandoned; one the run cordoned is uncordoned.
func TestAbandonUncordonsOnlyWhatTheRunCordoned(t *testing.T) {
	w := labWorld(t)
	labNodes(t, "cb-ab-1")
	if err := cp.AddNode(context.Background(), lab.NodeSpec{Name: "cb-ab-2", Unschedulable: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.RemoveNode(context.Background(), "cb-ab-2") })
	ctx := context.Background()
	ns := "cb-ab"
	cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	for _, node := range []string{"cb-ab-1", "cb-ab-2"} {
		// A bare pod on each node blocks a drain without --force.
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "bare-" + node, Namespace: ns}, Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "pause"}}}}
		if _, err := cp.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, node := range []string{"cb-ab-1", "cb-ab-2"} {
		r := w.run("drain", "--new", "--cluster-name", "lab1", "--hostname-to-drain", node)
		wantCode(t, r, 1)
		if !strings.Contains(r.stderr, "bare-"+node) || !strings.Contains(r.stderr, "--force") {
			t.Errorf("failure does not name the bare pod and the flag:\n%s", r.stderr)
		}
	}
	for _, run := range w.runs() {
		wantCode(t, w.run("abandon", run.ID), 0)
	}
	if cordoned(t, "cb-ab-1") {
		t.Error("abandon left cb-ab-1 cordoned although the run cordoned it")
	}
	if !cordoned(t, "cb-ab-2") {
		t.Error("abandon uncordoned cb-ab-2, which an administrator had cordoned")
	}
}
