package lab

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

var cp *ControlPlane

func TestMain(m *testing.M) {
	if os.Getenv("LAB_TEST_OWNER") == "1" {
		ownerMain()
	}
	os.Exit(RunTests(m, &cp))
}

// ownerMain is the child of TestKilledOwnerLeavesNothing: it starts a control plane,
// prints its directory and waits to be killed.
func ownerMain() {
	c, err := StartControlPlane(context.Background(), Options{Name: fmt.Sprintf("owner-%d", os.Getpid())})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("DIR %s\n", c.Dir)
	select {}
}

// processesUnder returns the processes whose command line names dir.
func processesUnder(dir string) []string {
	var out []string
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range cmdlines {
		b, err := os.ReadFile(f)
		if err != nil || len(b) == 0 {
			continue
		}
		line := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(line, dir) {
			out = append(out, filepath.Base(filepath.Dir(f))+": "+line)
		}
	}
	return out
}

// waitNothingUnder waits until no process names dir and dir is gone.
func waitNothingUnder(t *testing.T, dir string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		procs := processesUnder(dir)
		_, statErr := os.Stat(dir)
		if len(procs) == 0 && os.IsNotExist(statErr) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s after %s: processes %v, directory still there: %v", dir, timeout, procs, statErr == nil)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestStopLeavesNothing(t *testing.T) {
	Need(t, cp)
	c, err := StartControlPlane(context.Background(), Options{Name: fmt.Sprintf("stop-%d", os.Getpid())})
	if err != nil {
		t.Fatal(err)
	}
	if len(processesUnder(c.Dir)) < 4 {
		t.Fatalf("control plane processes: %v", processesUnder(c.Dir))
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	waitNothingUnder(t, c.Dir, 5*time.Second)
}

// TestKilledOwnerLeavesNothing kills, with SIGKILL, a process that started a control plane:
// its watchdog removes every process and file.
func TestKilledOwnerLeavesNothing(t *testing.T) {
	Need(t, cp)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "LAB_TEST_OWNER=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	dir, ok := strings.CutPrefix(strings.TrimSpace(line), "DIR ")
	if err != nil || !ok || dir == "" {
		t.Fatalf("child printed %q: %v", line, err)
	}
	if procs := processesUnder(dir); len(procs) < 4 {
		t.Fatalf("control plane processes of the child: %v", procs)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	waitNothingUnder(t, dir, 30*time.Second)
}

func TestPinnedVersions(t *testing.T) {
	v := PinnedVersions()
	for name, got := range map[string]string{"K8S": v.Kubernetes, "ETCD": v.Etcd, "KWOK": v.Kwok} {
		if !strings.HasPrefix(got, "v") {
			t.Errorf("%s version = %q, want vX.Y.Z", name, got)
		}
	}
}

// podsOn returns the pods of the namespace bound to node, by app label.
func podsOn(t *testing.T, ns, node string) map[string]int {
	t.Helper()
	out, err := cp.PodsOn(context.Background(), ns, node)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDrainWithRealKubectl(t *testing.T) {
	Need(t, cp)
	ctx := context.Background()
	nodes := []string{"drain-1", "drain-2", "drain-3"}
	for _, n := range nodes {
		if err := cp.AddNode(ctx, NodeSpec{Name: n, Labels: map[string]string{"test": "drain"}}); err != nil {
			t.Fatal(err)
		}
		defer cp.RemoveNode(ctx, n)
	}
	ns := "sample-drain"
	if err := cp.ApplySampleWorkload(ctx, ns); err != nil {
		t.Fatal(err)
	}
	// 4 web + 3 api + 2 cache + 3 daemonset + 1 bare + 2 statefulset.
	if err := cp.WaitPodsRunning(ctx, ns, 15, 2*time.Minute); err != nil {
		t.Fatalf("sample workload not running: %v", err)
	}
	victim := podsOn(t, ns, "drain-1")
	t.Logf("pods on drain-1 before: %v", victim)

	// Watch web's pods during the drain: its PDB (maxUnavailable 1) allows at most one
	// of its 4 pods down at a time.
	stopWatch, err := cp.WatchFewestRunning(ctx, ns, "web", 4)
	if err != nil {
		t.Fatal(err)
	}
	out, err := cp.Kubectl(ctx, "drain", "drain-1", "--ignore-daemonsets", "--delete-emptydir-data", "--force", "--timeout=2m")
	minReady := stopWatch()
	if err != nil {
		t.Fatalf("kubectl drain: %v\n%s", err, out)
	}
	after := podsOn(t, ns, "drain-1")
	for app := range after {
		if app != SampleWorkload.DaemonSet {
			t.Errorf("pod of %s still on drain-1 after drain: %v", app, after)
		}
	}
	if err := cp.WaitPodsRunning(ctx, ns, 14, 2*time.Minute); err != nil { // the bare pod is gone for good
		t.Errorf("evicted pods not rescheduled: %v", err)
	}
	if minReady < 3 {
		t.Errorf("web dropped to %d running pods during the drain; its PDB allows 3", minReady)
	}
	n, _ := cp.Client.CoreV1().Nodes().Get(ctx, "drain-1", metav1.GetOptions{})
	if !n.Spec.Unschedulable {
		t.Error("kubectl drain did not cordon the node")
	}
}

func TestRebootNode(t *testing.T) {
	Need(t, cp)
	ctx := context.Background()
	if err := cp.AddNode(ctx, NodeSpec{Name: "reboot-1"}); err != nil {
		t.Fatal(err)
	}
	defer cp.RemoveNode(ctx, "reboot-1")
	before, err := cp.Client.CoreV1().Nodes().Get(ctx, "reboot-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.RebootNode(ctx, "reboot-1", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := cp.WaitNodeReady(ctx, "reboot-1", false, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := cp.WaitNodeReady(ctx, "reboot-1", true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	after, _ := cp.Client.CoreV1().Nodes().Get(ctx, "reboot-1", metav1.GetOptions{})
	if after.Status.NodeInfo.BootID == before.Status.NodeInfo.BootID || after.Status.NodeInfo.BootID == "" {
		t.Errorf("bootID %q -> %q, want a new one", before.Status.NodeInfo.BootID, after.Status.NodeInfo.BootID)
	}
	// Still Ready a little later: kwok manages the node again.
	time.Sleep(2 * time.Second)
	again, _ := cp.Client.CoreV1().Nodes().Get(ctx, "reboot-1", metav1.GetOptions{})
	if !IsReady(again) {
		t.Error("node went NotReady again after its reboot")
	}
}

func TestWriteRequestsFromAuditLog(t *testing.T) {
	Need(t, cp)
	ctx := context.Background()
	since := time.Now()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "audit-probe"}}
	if _, err := cp.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		evs, err := cp.WriteRequests(ctx, since, "")
		if err != nil {
			return false, err
		}
		for _, e := range evs {
			if e.Verb == "create" && strings.Contains(e.RequestURI, "/namespaces") {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("namespace create not in the audit log: %v", err)
	}
}
