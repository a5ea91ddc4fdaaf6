package lab

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

var cp *ControlPlane

// helperEnv makes the test binary, run by TestKilledOwnerLeavesNothing, start a control
// plane, print where it lives and wait to be killed instead of running tests.
const helperEnv = "LAB_TEST_HELPER_START"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperStart())
	}
	os.Exit(RunTests(m, &cp))
}

// helperStart starts a control plane, prints its dir, work dir, apiserver address and
// pids on one line, and blocks until killed.
func helperStart() int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := StartControlPlane(ctx, Options{Name: "killed"})
	if err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	fmt.Println("STARTED", c.Dir, c.workDir, hostPort(c), pidList(pidFiles(c.workDir)), c.watchdog.cmd.Process.Pid)
	select {}
}

func hostPort(c *ControlPlane) string {
	u, err := url.Parse(c.RESTConfig.Host)
	if err != nil {
		return c.RESTConfig.Host
	}
	return u.Host
}

func pidList(pids []int) string {
	var s []string
	for _, p := range pids {
		s = append(s, strconv.Itoa(p))
	}
	return strings.Join(s, ",")
}

func TestPinnedVersions(t *testing.T) {
	v := PinnedVersions()
	for name, got := range map[string]string{"K8S": v.Kubernetes, "ETCD": v.Etcd, "KWOK": v.Kwok} {
		if !strings.HasPrefix(got, "v") {
			t.Errorf("%s version = %q, want vX.Y.Z", name, got)
		}
	}
	dir, _ := BinDir()
	key := fmt.Sprintf("k8s-%s_etcd-%s_kwok-%s", v.Kubernetes, v.Etcd, v.Kwok)
	if os.Getenv("COOKBOOK_LAB_BIN") == "" && !strings.HasSuffix(dir, "/cookbook/lab/"+key+"/bin") {
		t.Errorf("BinDir() = %s, want .../cookbook/lab/%s/bin", dir, key)
	}
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

// gone waits until no process of pids runs from workDir, no process at all (the watchdog
// included) names dir on its command line, the address refuses connections and dir does
// not exist.
func gone(t *testing.T, within time.Duration, dir, workDir, addr string, pids []int) {
	t.Helper()
	var left string
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, within, true, func(context.Context) (bool, error) {
		for _, p := range pids {
			if ours(p, workDir) {
				left = fmt.Sprintf("process %d still runs", p)
				return false, nil
			}
		}
		if procs := processesUnder(dir); len(procs) > 0 {
			left = fmt.Sprintf("processes still name %s: %v", dir, procs)
			return false, nil
		}
		if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			conn.Close()
			left = addr + " still accepts connections"
			return false, nil
		}
		if _, err := os.Stat(dir); err == nil {
			left = dir + " still exists"
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		t.Errorf("after %v: %s", within, left)
	}
}

func TestStopLeavesNothing(t *testing.T) {
	Need(t, cp)
	ctx := context.Background()
	start := time.Now()
	c, err := StartControlPlane(ctx, Options{Name: "stop-probe", BinDir: cp.BinDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane ready in %v", time.Since(start).Round(time.Millisecond))
	pids := pidFiles(c.workDir)
	if len(pids) < 5 {
		t.Errorf("pids %v: want etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok-controller", pids)
	}
	start = time.Now()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped in %v", time.Since(start).Round(time.Millisecond))
	gone(t, 5*time.Second, c.Dir, c.workDir, hostPort(c), pids)
}

func TestKilledOwnerLeavesNothing(t *testing.T) {
	Need(t, cp)
	h := startHelper(t)
	// SIGKILL: the owner gets no chance to clean up; its watchdog must.
	h.kill()
	gone(t, 15*time.Second, h.dir, h.workDir, h.addr, h.pids)
}

func TestLeftoversSweptOnStart(t *testing.T) {
	Need(t, cp)
	h := startHelper(t)
	// The watchdog dies first, then its owner: the next start of a control plane in a
	// temp dir cleans up.
	if err := syscall.Kill(h.watchdog, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	h.kill()
	if !ours(h.pids[0], h.workDir) {
		t.Fatalf("process %d gone before the sweep", h.pids[0])
	}
	sweepTemp(context.Background())
	gone(t, 5*time.Second, h.dir, h.workDir, h.addr, h.pids)
}

// helper is a test binary running helperStart.
type helper struct {
	cmd                *exec.Cmd
	dir, workDir, addr string
	pids               []int
	watchdog           int
}

func startHelper(t *testing.T) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd}
	t.Cleanup(h.kill)
	line, _ := bufio.NewReader(out).ReadString('\n')
	f := strings.Fields(line)
	if len(f) != 6 || f[0] != "STARTED" {
		t.Fatalf("helper: %q", line)
	}
	h.dir, h.workDir, h.addr = f[1], f[2], f[3]
	for _, p := range strings.Split(f[4], ",") {
		n, _ := strconv.Atoi(p)
		h.pids = append(h.pids, n)
	}
	h.watchdog, _ = strconv.Atoi(f[5])
	return h
}

func (h *helper) kill() {
	if h.cmd.ProcessState == nil {
		_ = h.cmd.Process.Kill()
		_ = h.cmd.Wait()
	}
}

func TestDrainWithRealKubectl(t *testing.T) {
	Need(t, cp)
	ctx := context.Background()
	nodes := []string{"drain-1", "drain-2", "drain-3"}
	for i, n := range nodes {
		// Everything lands on drain-1 first, so that the drain has to go through the PDBs.
		spec := NodeSpec{Name: n, Labels: map[string]string{"test": "drain"}, Unschedulable: i > 0}
		if err := cp.AddNode(ctx, spec); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cp.RemoveNode(context.Background(), n) })
	}
	ns := "sample-drain"
	if err := cp.ApplySampleWorkload(ctx, ns); err != nil {
		t.Fatal(err)
	}
	// 4 web + 3 api + 2 cache + 3 daemonset + 1 bare + 2 statefulset.
	if err := cp.WaitPodsRunning(ctx, ns, 15, 2*time.Minute); err != nil {
		t.Fatalf("sample workload not running: %v", err)
	}
	before := podsOn(t, ns, "drain-1")
	t.Logf("pods on drain-1 before the drain: %v", before)
	if before["web"] != 4 || before["api"] != 3 {
		t.Fatalf("want all of web and api on drain-1, got %v", before)
	}
	for _, n := range nodes[1:] {
		if _, err := cp.Kubectl(ctx, "uncordon", n); err != nil {
			t.Fatal(err)
		}
	}

	// During the drain, web (PDB maxUnavailable 1, 4 replicas) never has fewer than 3
	// pods Running, api (PDB minAvailable 2) never fewer than 2.
	stopWeb, err := cp.WatchFewestRunning(ctx, ns, "web", 4)
	if err != nil {
		t.Fatal(err)
	}
	stopAPI, err := cp.WatchFewestRunning(ctx, ns, "api", 3)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := cp.Kubectl(ctx, "drain", "drain-1", "--ignore-daemonsets", "--delete-emptydir-data", "--force", "--timeout=2m")
	fewestWeb, fewestAPI := stopWeb(), stopAPI()
	if err != nil {
		t.Fatalf("kubectl drain: %v\n%s", err, out)
	}
	t.Logf("kubectl drain took %v; fewest Running during it: web %d (PDB maxUnavailable 1 of 4), api %d (PDB minAvailable 2)", time.Since(start).Round(time.Millisecond), fewestWeb, fewestAPI)
	if fewestWeb < 3 {
		t.Errorf("web dropped to %d running pods during the drain; its PDB allows 3", fewestWeb)
	}
	if fewestAPI < 2 {
		t.Errorf("api dropped to %d running pods during the drain; its PDB allows 2", fewestAPI)
	}
	for app := range podsOn(t, ns, "drain-1") {
		if app != SampleWorkload.DaemonSet {
			t.Errorf("a pod of %s is still on drain-1 after the drain", app)
		}
	}
	n, err := cp.Client.CoreV1().Nodes().Get(ctx, "drain-1", metav1.GetOptions{})
	if err != nil || !n.Spec.Unschedulable {
		t.Errorf("kubectl drain did not cordon the node (%v)", err)
	}

	// Every controller's pods run again, on the other nodes; the bare pod, if it was on
	// drain-1, is gone for good.
	want := map[string]int{SampleWorkload.StatefulSet: 2}
	for d, r := range SampleWorkload.Deployments {
		want[d] = int(r)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		got := map[string]int{}
		for _, node := range nodes[1:] {
			for app, k := range podsOn(t, ns, node) {
				got[app] += k
			}
		}
		for app, k := range want {
			if got[app] != k {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Errorf("evicted pods not rescheduled on drain-2 and drain-3: %v", err)
	}
}

// podsOn returns the Running pods of the namespace bound to node, by app label.
func podsOn(t *testing.T, ns, node string) map[string]int {
	t.Helper()
	pods, err := cp.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			out[p.Labels["app"]]++
		}
	}
	return out
}

func TestAddNodeLabelsTaints(t *testing.T) {
	Need(t, cp)
	ctx := context.Background()
	taint := corev1.Taint{Key: "dedicated", Value: "ingress", Effect: corev1.TaintEffectNoSchedule}
	spec := NodeSpec{Name: "spec-1", Labels: map[string]string{"role": "ingress"}, Taints: []corev1.Taint{taint}, Unschedulable: true}
	if err := cp.AddNode(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.RemoveNode(context.Background(), "spec-1") })
	n, err := cp.Client.CoreV1().Nodes().Get(ctx, "spec-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !IsReady(n) || n.Labels["role"] != "ingress" || !n.Spec.Unschedulable {
		t.Errorf("node: ready=%v labels=%v unschedulable=%v", IsReady(n), n.Labels, n.Spec.Unschedulable)
	}
	found := false
	for _, tt := range n.Spec.Taints {
		found = found || (tt.Key == taint.Key && tt.Value == taint.Value && tt.Effect == taint.Effect)
	}
	if !found {
		t.Errorf("taints %v, want %v among them", n.Spec.Taints, taint)
	}
	if err := cp.RemoveNode(ctx, "spec-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Client.CoreV1().Nodes().Get(ctx, "spec-1", metav1.GetOptions{}); err == nil {
		t.Error("node still there after RemoveNode")
	}
	if err := cp.RemoveNode(ctx, "spec-1"); err != nil {
		t.Errorf("RemoveNode of a missing node: %v", err)
	}
}

func TestRebootNode(t *testing.T) {
	Need(t, cp)
	ctx := context.Background()
	if err := cp.AddNode(ctx, NodeSpec{Name: "reboot-1"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.RemoveNode(context.Background(), "reboot-1") })
	before, err := cp.Client.CoreV1().Nodes().Get(ctx, "reboot-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cp.RebootNode(ctx, "reboot-1", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := cp.WaitNodeReady(ctx, "reboot-1", false, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := cp.WaitNodeReady(ctx, "reboot-1", true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Errorf("node back Ready after %v, want at least the 2s down time", d)
	}
	after, err := cp.Client.CoreV1().Nodes().Get(ctx, "reboot-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if after.Status.NodeInfo.BootID == before.Status.NodeInfo.BootID || after.Status.NodeInfo.BootID == "" {
		t.Errorf("bootID %q -> %q, want a new one", before.Status.NodeInfo.BootID, after.Status.NodeInfo.BootID)
	}
	// Still Ready, with the same boot id, for 3s: kwok manages the node again. The reads use
	// the test's context, not one that ends with the 3s (a read cut short by that deadline
	// would fail the test without saying anything about the node).
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		n, err := cp.Client.CoreV1().Nodes().Get(ctx, "reboot-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !IsReady(n) || n.Status.NodeInfo.BootID != after.Status.NodeInfo.BootID {
			t.Fatalf("node ready=%v bootID=%s %v after its reboot, want Ready with bootID %s", IsReady(n), n.Status.NodeInfo.BootID, time.Since(start).Round(time.Millisecond), after.Status.NodeInfo.BootID)
		}
	}
}

func TestWriteRequestsFromAuditLog(t *testing.T) {
	Need(t, cp)
	ctx := context.Background()
	since := time.Now()
	cfg := *cp.RESTConfig
	cfg.UserAgent = "lab-audit-probe/1.0"
	c, err := kubernetes.NewForConfig(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "audit-probe"}}
	if _, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Reads are not write requests.
	if _, err := c.CoreV1().Namespaces().Get(ctx, "audit-probe", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.CoreV1().Namespaces().Delete(ctx, "audit-probe", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var evs []AuditEvent
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		evs, err = cp.WriteRequests(ctx, since, "lab-audit-probe")
		return len(evs) >= 2, err
	})
	if err != nil {
		t.Fatalf("write requests %+v: %v", evs, err)
	}
	var got []string
	for _, e := range evs {
		got = append(got, e.Verb+" "+e.Resource+"/"+e.Name)
	}
	if want := "create namespaces/audit-probe,delete namespaces/audit-probe"; strings.Join(got, ",") != want {
		t.Errorf("write requests = %v, want %s", got, want)
	}
	if later, err := cp.WriteRequests(ctx, time.Now(), "lab-audit-probe"); err != nil || len(later) != 0 {
		t.Errorf("write requests after now = %v, %v; want none", later, err)
	}
}

// TestPodsReadyAgainAfterReboot: a pod the node lifecycle controller marked not Ready
// (as it does to the pods of a NotReady node, late when it lags) is Ready again soon after
// its node is back, as a real kubelet's status sync makes it.
func TestPodsReadyAgainAfterReboot(t *testing.T) {
	Need(t, cp)
	ctx := context.Background()
	if err := cp.AddNode(ctx, NodeSpec{Name: "resync-1"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.RemoveNode(context.Background(), "resync-1") })
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "resync-pod", Namespace: "default"}, Spec: podTemplate("resync").Spec}
	pod.Spec.NodeName = "resync-1"
	if _, err := cp.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		zero := int64(0)
		cp.Client.CoreV1().Pods("default").Delete(context.Background(), "resync-pod", metav1.DeleteOptions{GracePeriodSeconds: &zero})
	})
	podReady := func() (bool, error) {
		p, err := cp.Client.CoreV1().Pods("default").Get(ctx, "resync-pod", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady {
				return c.Status == corev1.ConditionTrue, nil
			}
		}
		return false, nil
	}
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) { return podReady() }); err != nil {
		t.Fatalf("pod never Ready on its node: %v", err)
	}
	if err := cp.RebootNode(ctx, "resync-1", time.Second); err != nil {
		t.Fatal(err)
	}
	if err := cp.WaitNodeReady(ctx, "resync-1", true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	// What a lagging node lifecycle controller does after the node is back.
	p, err := cp.Client.CoreV1().Pods("default").Get(ctx, "resync-pod", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			p.Status.Conditions[i].Status = corev1.ConditionFalse
			p.Status.Conditions[i].LastTransitionTime = metav1.Now()
		}
	}
	if _, err := cp.Client.CoreV1().Pods("default").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if ready, err := podReady(); err != nil || ready {
		t.Fatalf("pod ready=%v (%v) right after it was marked not Ready", ready, err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) { return podReady() }); err != nil {
		t.Fatalf("pod still not Ready 30s after it was marked so on a Ready node: %v", err)
	}
}

// TestBuildOnlyMissing: make lab-bins, given a cache holding every binary but kubeadm (a
// binary added to the set later), builds kubeadm alone and leaves the others as they were;
// run again, it has nothing to do. It builds kubeadm for real (about 20 s with a warm Go
// build cache).
func TestBuildOnlyMissing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kubeadm (-short)")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go toolchain")
	}
	cache := t.TempDir()
	v := PinnedVersions()
	bin := filepath.Join(cache, "cookbook", "lab", fmt.Sprintf("k8s-%s_etcd-%s_kwok-%s", v.Kubernetes, v.Etcd, v.Kwok), "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	fake := "#!/bin/sh\necho 'a binary the cache had'\n"
	for _, b := range binaries {
		if b != "kubeadm" {
			if err := os.WriteFile(filepath.Join(bin, b), []byte(fake), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	// XDG_CACHE_HOME moves the Go build cache too unless GOCACHE says where it is.
	gocache, err := exec.Command("go", "env", "GOCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	build := func() string {
		t.Helper()
		cmd := exec.Command("bash", filepath.Join("bins", "build.sh"))
		cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+cache, "GOCACHE="+strings.TrimSpace(string(gocache)))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("build.sh: %v\n%s", err, out)
		}
		return string(out)
	}
	out := build()
	if !strings.Contains(out, "lab-bins: building kubeadm into "+bin) || strings.Contains(out, "kube-apiserver") || strings.Contains(out, "etcd v") {
		t.Errorf("build.sh with only kubeadm missing:\n%s", out)
	}
	for _, b := range binaries {
		got, err := os.ReadFile(filepath.Join(bin, b))
		if err != nil {
			t.Fatal(err)
		}
		if (b == "kubeadm") == (string(got) == fake) {
			t.Errorf("%s after the build: %d bytes", b, len(got))
		}
	}
	if ver, err := exec.Command(filepath.Join(bin, "kubeadm"), "version", "-o", "short").Output(); err != nil || strings.TrimSpace(string(ver)) != v.Kubernetes {
		t.Errorf("kubeadm version -o short: %q, %v; want %s", ver, err, v.Kubernetes)
	}
	if out := build(); !strings.Contains(out, "lab-bins: up to date in "+bin) {
		t.Errorf("build.sh with every binary there:\n%s", out)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(bin), ".build-*")); len(left) != 0 {
		t.Errorf("build.sh left %v", left)
	}
}
