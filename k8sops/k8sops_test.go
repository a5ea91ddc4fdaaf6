package k8sops

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"example.com/cookbook/dryrun"
	"example.com/cookbook/lab"
)

var cp *lab.ControlPlane

func TestMain(m *testing.M) { os.Exit(lab.RunTests(m, &cp)) }

// newOps returns Ops talking to the lab as user agent ua, logging into buf.
func newOps(t *testing.T, ua string, dry bool) (*Ops, *bytes.Buffer) {
	t.Helper()
	cfg := rest.CopyConfig(cp.RESTConfig)
	cfg.UserAgent = ua
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&syncWriter{w: &buf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return &Ops{Client: c, Gate: &dryrun.Gate{DryRun: dry, Log: log}, Log: log, ReportEvery: 500 * time.Millisecond}, &buf
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func addNodes(t *testing.T, names ...string) {
	t.Helper()
	ctx := context.Background()
	for _, n := range names {
		if err := cp.AddNode(ctx, lab.NodeSpec{Name: n}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cp.RemoveNode(context.Background(), n) })
	}
}

func running(t *testing.T, ns string, want int) {
	t.Helper()
	if err := cp.WaitPodsRunning(context.Background(), ns, want, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
}

func podsOn(t *testing.T, ns, node string) map[string]int {
	t.Helper()
	out, err := cp.PodsOn(context.Background(), ns, node)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// minRunning records the fewest running pods of app at once; see lab.WatchFewestRunning.
func minRunning(t *testing.T, ns, app string, want int) (stop func() int) {
	t.Helper()
	stop, err := cp.WatchFewestRunning(context.Background(), ns, app, want)
	if err != nil {
		t.Fatal(err)
	}
	return stop
}

func TestCordonRecordsPriorState(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	addNodes(t, "cordon-1")
	if err := cp.AddNode(ctx, lab.NodeSpec{Name: "cordon-2", Unschedulable: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.RemoveNode(context.Background(), "cordon-2") })
	o, _ := newOps(t, "cookbook-test-cordon", false)
	was, err := o.Cordon(ctx, "cordon-1")
	if err != nil || was {
		t.Fatalf("Cordon(cordon-1) = %v, %v; want false (was schedulable)", was, err)
	}
	if n, _ := o.Node(ctx, "cordon-1"); !n.Spec.Unschedulable {
		t.Error("cordon-1 not cordoned")
	}
	was, err = o.Cordon(ctx, "cordon-2")
	if err != nil || !was {
		t.Fatalf("Cordon(cordon-2) = %v, %v; want true (an admin had cordoned it)", was, err)
	}
	if err := o.Uncordon(ctx, "cordon-1"); err != nil {
		t.Fatal(err)
	}
	if n, _ := o.Node(ctx, "cordon-1"); n.Spec.Unschedulable {
		t.Error("cordon-1 still cordoned")
	}
}

func TestDrainSampleWorkload(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	addNodes(t, "sample-1", "sample-2", "sample-3")
	ns := "drain-sample"
	if err := cp.ApplySampleWorkload(ctx, ns); err != nil {
		t.Fatal(err)
	}
	running(t, ns, 15)
	// Put the bare pod and one cache (emptyDir) pod on the node to drain, to be sure.
	victim := "sample-1"
	before := podsOn(t, ns, victim)
	t.Logf("on %s before: %v", victim, before)

	o, logs := newOps(t, "cookbook-test-drain", false)
	if _, err := o.Cordon(ctx, victim); err != nil {
		t.Fatal(err)
	}
	if before["cache"] > 0 || before["debug-shell"] > 0 {
		err := o.Drain(ctx, victim, DrainOptions{Timeout: time.Minute})
		if err == nil {
			t.Fatal("drain without --force/--delete-emptydir-data succeeded with a bare or emptyDir pod on the node")
		}
		if before["debug-shell"] > 0 && !strings.Contains(err.Error(), "debug-shell") {
			t.Errorf("error does not name the bare pod: %v", err)
		}
		if got := podsOn(t, ns, victim); got["web"] != before["web"] {
			t.Errorf("a refused drain evicted pods: %v -> %v", before, got)
		}
	}
	stopWeb := minRunning(t, ns, "web", 4)
	stopAPI := minRunning(t, ns, "api", 3)
	err := o.Drain(ctx, victim, DrainOptions{Force: true, DeleteEmptyDirData: true, Timeout: 2 * time.Minute})
	webMin, apiMin := stopWeb(), stopAPI()
	if err != nil {
		t.Fatalf("drain: %v\n%s", err, logs)
	}
	after := podsOn(t, ns, victim)
	for app, n := range after {
		if app != "node-agent" {
			t.Errorf("%d pod(s) of %s still on %s", n, app, victim)
		}
	}
	if after["node-agent"] != 1 {
		t.Errorf("the DaemonSet pod must stay: %v", after)
	}
	if webMin < 3 || apiMin < 2 {
		t.Errorf("a PDB was violated: web fell to %d running (needs 3), api to %d (needs 2)", webMin, apiMin)
	}
	if !strings.Contains(logs.String(), "ignoring DaemonSet-managed Pods") {
		t.Errorf("the log does not say why the DaemonSet pod stays:\n%s", logs)
	}
}

func TestDrainBlockedByPDBTimesOutNamingIt(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	addNodes(t, "stuck-1")
	ns := "drain-stuck"
	singletonBehindPDB(t, ns)
	o, logs := newOps(t, "cookbook-test-stuck", false)
	// Wait until the disruption controller has computed the budget.
	wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "singleton", metav1.GetOptions{})
		return err == nil && p.Status.ObservedGeneration > 0 && p.Status.CurrentHealthy == 1, nil
	})
	if _, err := o.Cordon(ctx, "stuck-1"); err != nil {
		t.Fatal(err)
	}
	plan, err := o.PlanDrain(ctx, "stuck-1", DrainOptions{})
	if err != nil || len(plan.PDBs) != 1 || !plan.PDBs[0].WouldBlock() {
		t.Fatalf("plan = %+v, %v; want the singleton PDB to block", plan, err)
	}
	err = o.Drain(ctx, "stuck-1", DrainOptions{Timeout: 3 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "PDB drain-stuck/singleton allows 0 disruption(s)") {
		t.Fatalf("error = %v, want it to name the blocking PDB", err)
	}
	if n := strings.Count(logs.String(), "waiting on disruption budget"); n == 0 || n > 10 {
		t.Errorf("%d 'waiting on disruption budget' lines in 3s; want a few, not one per retry:\n%s", n, logs)
	}
	// The operator's explicit choice: delete, bypassing the budget.
	if err := o.Drain(ctx, "stuck-1", DrainOptions{DisableEviction: true, Timeout: time.Minute}); err != nil {
		t.Fatalf("drain with eviction disabled: %v", err)
	}
}

// removeDeployment deletes the deployment and its budget of the same name at the end of
// the test and waits until the namespace has no pod left: a pod it left pending would land
// on the next test's node, and a budget without its pods would fail the next health gates.
func removeDeployment(t *testing.T, ns, name string) {
	t.Cleanup(func() {
		ctx := context.Background()
		cp.Client.PolicyV1().PodDisruptionBudgets(ns).Delete(ctx, name, metav1.DeleteOptions{})
		bg := metav1.DeletePropagationForeground
		cp.Client.AppsV1().Deployments(ns).Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &bg})
		wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			pods, err := cp.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			return err == nil && len(pods.Items) == 0, nil
		})
	})
}

// countPDBRequests makes o's client count its requests about disruption budgets.
func countPDBRequests(t *testing.T, o *Ops) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	cfg := rest.CopyConfig(cp.RESTConfig)
	cfg.UserAgent = "cookbook-test-shared"
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if strings.Contains(r.URL.Path, "/poddisruptionbudgets") {
				n.Add(1)
			}
			return rt.RoundTrip(r)
		})
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	o.Client = c
	return &n
}

// TestDrainSharedBudgetWatch: drains through a health watch (a rolling job's) read and
// watch the disruption budgets through its one watch, with no request of their own, and
// still wait on a budget, name it, and go on as soon as it allows.
func TestDrainSharedBudgetWatch(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	addNodes(t, "shared-1")
	ns := "drain-shared"
	singletonBehindPDB(t, ns)
	wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "singleton", metav1.GetOptions{})
		return err == nil && p.Status.ObservedGeneration > 0 && p.Status.CurrentHealthy == 1, nil
	})
	if len(podsOn(t, ns, "shared-1")) == 0 {
		t.Skip("the scheduler put the pod on another node")
	}
	o, logs := newOps(t, "cookbook-test-shared", false)
	pdbRequests := countPDBRequests(t, o)
	w, err := o.WatchHealth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if _, err := o.Cordon(ctx, "shared-1"); err != nil {
		t.Fatal(err)
	}
	watchOnly := pdbRequests.Load() // the health watch's list and watch
	err = w.Drain(ctx, "shared-1", DrainOptions{Timeout: 3 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "PDB drain-shared/singleton allows 0 disruption(s)") {
		t.Fatalf("error = %v, want it to name the blocking PDB\n%s", err, logs)
	}
	done := make(chan error, 1)
	go func() { done <- w.Drain(ctx, "shared-1", DrainOptions{Timeout: time.Minute}) }()
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return strings.Count(logs.String(), "waiting on disruption budget") > 1, nil
	}); err != nil {
		t.Fatalf("the second drain does not wait on the budget:\n%s", logs)
	}
	if n := pdbRequests.Load() - watchOnly; n != 0 {
		t.Errorf("the drains made %d request(s) about disruption budgets; want none (the shared watch has them)", n)
	}
	zero := intstr.FromInt32(0)
	pdb, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "singleton", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pdb.Spec.MinAvailable = &zero
	if _, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Update(ctx, pdb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("drain once the budget allows: %v\n%s", err, logs)
	}
	if got := podsOn(t, ns, "shared-1"); got["singleton"] != 0 {
		t.Errorf("pods left on shared-1: %v", got)
	}
}

func TestWaits(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	addNodes(t, "wait-1")
	o, logs := newOps(t, "cookbook-test-wait", false)
	n, err := o.Node(ctx, "wait-1")
	if err != nil || n.Status.NodeInfo.BootID == "" {
		t.Fatalf("Node = %+v, %v; want a boot id", n, err)
	}
	old := n.Status.NodeInfo.BootID
	notReady := func(n *corev1.Node) bool { return n == nil || !IsReady(n) }
	rebooted := func(n *corev1.Node) bool {
		return n != nil && IsReady(n) && n.Status.NodeInfo.BootID != "" && n.Status.NodeInfo.BootID != old
	}
	if err := o.WaitReady(ctx, "wait-1", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := cp.RebootNode(ctx, "wait-1", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := o.WaitNode(ctx, "wait-1", "NotReady", 10*time.Second, notReady); err != nil {
		t.Fatal(err)
	}
	if err := o.WaitNode(ctx, "wait-1", "Ready with a new boot id", 30*time.Second, rebooted); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "reason=KubeletNotReady") {
		t.Errorf("the wait did not report the node's condition reason:\n%s", logs)
	}
	if err := o.WaitNode(ctx, "wait-1", "NotReady", time.Second, notReady); err == nil || !strings.Contains(err.Error(), "Ready=True") {
		t.Errorf("timeout error = %v, want it to say how the node stands", err)
	}
	if err := o.DeleteNode(ctx, "wait-1"); err != nil {
		t.Fatal(err)
	}
	if err := o.WaitNode(ctx, "wait-1", "gone", 10*time.Second, func(n *corev1.Node) bool { return n == nil }); err != nil {
		t.Fatal(err)
	}
}

func TestLabelsAndTaintsAreIdempotent(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	addNodes(t, "label-1")
	o, _ := newOps(t, "cookbook-test-label", false)
	labels := map[string]string{"toolforge.org/nfs-mounted": "true"}
	taints := []Taint{{Key: "ingress", Value: "true", Effect: "NoSchedule"}}
	var marks []time.Time // before the first application, between, after
	for i := 0; i < 2; i++ {
		marks = append(marks, time.Now())
		if err := o.ApplyLabels(ctx, "label-1", labels); err != nil {
			t.Fatal(err)
		}
		if err := o.ApplyTaints(ctx, "label-1", taints); err != nil {
			t.Fatal(err)
		}
	}
	marks = append(marks, time.Now())
	n, _ := o.Node(ctx, "label-1")
	ingress := 0
	for _, tt := range n.Spec.Taints {
		if tt.Key == "ingress" && tt.Value == "true" && tt.Effect == corev1.TaintEffectNoSchedule {
			ingress++
		}
	}
	if n.Labels["toolforge.org/nfs-mounted"] != "true" || ingress != 1 {
		t.Errorf("labels %v taints %v", n.Labels, n.Spec.Taints)
	}
	time.Sleep(time.Second) // the audit log is written asynchronously
	writes, err := cp.WriteRequests(ctx, marks[0], "cookbook-test-label")
	if err != nil {
		t.Fatal(err)
	}
	// The first time: one label patch and one taint patch succeed (a taint patch refused
	// with 409, because kwok updated the node in between, is retried). The second: nothing.
	var first, second []lab.AuditEvent
	for _, w := range writes {
		switch {
		case w.Time.Before(marks[1]) && w.Code < 300:
			first = append(first, w)
		case !w.Time.Before(marks[1]):
			second = append(second, w)
		}
	}
	if len(first) != 2 || len(second) != 0 {
		t.Errorf("successful writes the first time: %d, want 2; writes the second time: %d, want 0 (a no-op): %+v", len(first), len(second), writes)
	}
}

func TestHealthGate(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	addNodes(t, "gate-1", "gate-2")
	o, _ := newOps(t, "cookbook-test-gate", false)
	window := 300 * time.Millisecond
	start := time.Now()
	if err := o.WaitHealthy(ctx, GateOptions{Handled: []string{"gate-1"}, Window: window, Timeout: 30 * time.Second}); err != nil {
		t.Fatalf("healthy cluster failed the gate: %v", err)
	}
	if took := time.Since(start); took < window {
		t.Errorf("the gate passed after %s, before its window of %s", took, window)
	}
	if err := cp.SetNodeNotReady(ctx, "gate-2"); err != nil {
		t.Fatal(err)
	}
	err := o.WaitHealthy(ctx, GateOptions{Window: window, Timeout: 2 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "node gate-2 is not Ready") {
		t.Fatalf("gate error = %v, want it to name gate-2", err)
	}
	// A node the run is handling may be down.
	if err := o.WaitHealthy(ctx, GateOptions{Handling: []string{"gate-2"}, Window: window, Timeout: 30 * time.Second}); err != nil {
		t.Fatalf("gate with gate-2 excluded: %v", err)
	}
}

// TestHealthGateWindow: a node that turns NotReady and Ready again inside the window
// restarts it (the watch sees the blip, though the node is Ready when the gate looks
// again), and one watch serves gate after gate.
func TestHealthGateWindow(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	addNodes(t, "window-1", "window-2")
	o, _ := newOps(t, "cookbook-test-window", false)
	w, err := o.WatchHealth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	window := 1500 * time.Millisecond
	for round := 1; round <= 2; round++ {
		start := time.Now()
		passed := make(chan error, 1)
		go func() {
			passed <- w.Wait(ctx, GateOptions{Handled: []string{"window-1"}, Window: window, Timeout: 30 * time.Second})
		}()
		time.Sleep(window / 3)
		if err := cp.SetNodeNotReady(ctx, "window-2"); err != nil {
			t.Fatal(err)
		}
		readyAt := time.Now() // the Ready patch is the first request of SetNodeReady
		if err := cp.SetNodeReady(ctx, "window-2", ""); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-passed:
			t.Fatalf("round %d: the gate ended %s after it started, during the blip (%v)", round, time.Since(start).Round(time.Millisecond), err)
		default:
		}
		if err := <-passed; err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if since := time.Since(readyAt); since < window {
			t.Errorf("round %d: the gate passed %s after window-2 was Ready again; the blip should have restarted its %s window", round, since.Round(time.Millisecond), window)
		}
		t.Logf("round %d: gate passed %s after it started, %s after the blip ended", round, time.Since(start).Round(time.Millisecond), time.Since(readyAt).Round(time.Millisecond))
	}
}

// TestHealthGatePDB: a disruption budget that allows no disruption because some of its
// pods are not up blocks the gate, naming it, until they are; one that allows none with
// every pod healthy (maxUnavailable 0) does not.
func TestHealthGatePDB(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	addNodes(t, "pdbgate-1", "pdbgate-2", "pdbgate-3")
	ns := "gate-pdb"
	if _, err := cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.DeleteNamespace(context.Background(), ns, 2*time.Minute); err != nil {
			t.Error(err)
		}
	})
	for _, n := range []string{"pdbgate-1", "pdbgate-2"} {
		label(t, n, "gate-pdb", "yes")
	}
	// spread: 3 replicas, one per node, on the 2 labelled nodes: one stays Pending.
	spread := lab.Deployment(ns, "spread", 3)
	spread.Spec.Template.Spec.NodeSelector = map[string]string{"gate-pdb": "yes"}
	spread.Spec.Template.Spec.Affinity.PodAntiAffinity = &corev1.PodAntiAffinity{RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
		LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "spread"}}, TopologyKey: "kubernetes.io/hostname"}}}
	steady := lab.Deployment(ns, "steady", 1)
	for _, d := range []*appsv1.Deployment{spread, steady} {
		if _, err := cp.Client.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	one, zero := intstr.FromInt32(1), intstr.FromInt32(0)
	for _, p := range []*policyv1.PodDisruptionBudget{lab.PDB(ns, "spread", &one, nil), lab.PDB(ns, "steady", &zero, nil)} {
		if _, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	running(t, ns, 3) // spread's 2, steady's 1
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "spread", metav1.GetOptions{})
		return err == nil && p.Status.ObservedGeneration > 0 && p.Status.ExpectedPods == 3 && p.Status.CurrentHealthy == 2, nil
	})
	if err != nil {
		t.Fatalf("spread's budget never counted 2 of 3 pods healthy: %v", err)
	}
	o, _ := newOps(t, "cookbook-test-pdbgate", false)
	w, err := o.WatchHealth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	err = w.Wait(ctx, GateOptions{Window: 200 * time.Millisecond, Timeout: 2 * time.Second})
	want := "PDB gate-pdb/spread allows 0 disruption(s): 2 of 3 pod(s) healthy, needs 2"
	if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "steady") {
		t.Fatalf("gate error = %v, want it to name %q and not steady", err, want)
	}
	// A third node for the third pod: the budget is whole and the gate passes.
	label(t, "pdbgate-3", "gate-pdb", "yes")
	if err := w.Wait(ctx, GateOptions{Window: 200 * time.Millisecond, Timeout: time.Minute}); err != nil {
		t.Fatalf("gate once spread is whole: %v", err)
	}
}

func label(t *testing.T, node, key, value string) {
	t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, key, value)
	if _, err := cp.Client.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestHealthWatchStops: one watch serves many gates (each watching its handled nodes'
// pods), and Stop leaves no goroutine behind.
func TestHealthWatchStops(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	addNodes(t, "leak-1", "leak-2", "leak-3")
	o, _ := newOps(t, "cookbook-test-leak", false)
	if _, err := o.Nodes(ctx); err != nil { // the client's connection is not a leak
		t.Fatal(err)
	}
	before := goleak.IgnoreCurrent()
	w, err := o.WatchHealth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, batch := range [][]string{{"leak-1"}, {"leak-2", "leak-3"}, {"leak-1", "leak-2", "leak-3"}} {
		if err := w.Wait(ctx, GateOptions{Handled: batch, Window: 50 * time.Millisecond, Timeout: 30 * time.Second}); err != nil {
			t.Fatal(err)
		}
	}
	w.Stop()
	w.Stop() // harmless
	goleak.VerifyNone(t, before)
}

func TestDryRunMakesNoWrite(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	addNodes(t, "dry-1", "dry-2")
	ns := "drain-dry"
	if err := cp.ApplySampleWorkload(ctx, ns); err != nil {
		t.Fatal(err)
	}
	running(t, ns, 14) // everything of the sample workload, so nothing moves on its own
	// The scheduler may put none of the workload on dry-1 (other tests' nodes are there too):
	// a pod bound to it makes sure the drain has something to evict.
	pinned := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "pinned", Namespace: ns},
		Spec: corev1.PodSpec{NodeName: "dry-1", Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}}}
	if _, err := cp.Client.CoreV1().Pods(ns).Create(ctx, pinned, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running(t, ns, 15)
	o, logs := newOps(t, "cookbook-test-dry", true)
	since := time.Now()
	before := podsOn(t, ns, "dry-1")
	if _, err := o.Cordon(ctx, "dry-1"); err != nil {
		t.Fatal(err)
	}
	if err := o.Drain(ctx, "dry-1", DrainOptions{Force: true, DeleteEmptyDirData: true}); err != nil {
		t.Fatal(err)
	}
	if err := o.ApplyLabels(ctx, "dry-1", map[string]string{"a": "b"}); err != nil {
		t.Fatal(err)
	}
	if err := o.DeleteNode(ctx, "dry-1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	writes, err := cp.WriteRequests(ctx, since, "cookbook-test-dry")
	if err != nil {
		t.Fatal(err)
	}
	if len(writes) != 0 {
		t.Errorf("dry-run made %d write request(s): %+v", len(writes), writes)
	}
	if got := podsOn(t, ns, "dry-1"); len(got) != len(before) {
		t.Errorf("pods changed in dry-run: %v -> %v", before, got)
	}
	for _, want := range []string{"DRY-RUN: would cordon node dry-1", "DRY-RUN: would evict", "drain plan for dry-1:", "DRY-RUN: would delete node dry-1"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("dry-run log lacks %q", want)
		}
	}
}

// TestDryRunDrainAsksTheAPIServer: a dry-run drain sends each eviction as a server-side
// dry-run, so it reports the one a disruption budget refuses now, names nothing for the one
// a budget allows, and makes no write (the audit log shows only dry-run requests).
func TestDryRunDrainAsksTheAPIServer(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	addNodes(t, "ssdry-1")
	ns := "drain-ssdry"
	cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	one := intstr.FromInt32(1)
	for _, pdb := range []*policyv1.PodDisruptionBudget{
		lab.PDB(ns, "held", nil, &one), // 1 replica, 1 must stay: allows 0 disruptions
		lab.PDB(ns, "free", &one, nil), // 1 replica, 1 may go: allows 1
	} {
		if _, err := cp.Client.AppsV1().Deployments(ns).Create(ctx, lab.Deployment(ns, pdb.Name, 1), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	running(t, ns, 2)
	// Wait until the disruption controller has computed both budgets.
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		held, err1 := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "held", metav1.GetOptions{})
		free, err2 := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "free", metav1.GetOptions{})
		return err1 == nil && err2 == nil && held.Status.ObservedGeneration > 0 && held.Status.CurrentHealthy == 1 &&
			free.Status.ObservedGeneration > 0 && free.Status.DisruptionsAllowed == 1, nil
	})
	if err != nil {
		t.Fatalf("disruption budgets not computed: %v", err)
	}
	o, logs := newOps(t, "cookbook-test-ssdry", true)
	since := time.Now()
	before := podsOn(t, ns, "ssdry-1")
	if before["held"] != 1 || before["free"] != 1 {
		t.Fatalf("pods on ssdry-1: %v, want one of held and one of free", before)
	}
	if err := o.Drain(ctx, "ssdry-1", DrainOptions{}); err != nil {
		t.Fatalf("dry-run drain: %v\n%s", err, logs)
	}
	out := logs.String()
	for _, want := range []string{"DRY-RUN: would evict pod " + ns + "/held-", "DRY-RUN: would evict pod " + ns + "/free-", "DRY-RUN: eviction of " + ns + "/held-"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry-run log lacks %q:\n%s", want, out)
		}
	}
	if !regexp.MustCompile(`DRY-RUN: eviction of ` + ns + `/held-\S+ would be refused now: [^\n]*disruption budget`).MatchString(out) {
		t.Errorf("the refused eviction does not give the API server's reason:\n%s", out)
	}
	if strings.Contains(out, "eviction of "+ns+"/free-") {
		t.Errorf("an eviction the budget allows is reported as refused:\n%s", out)
	}
	time.Sleep(time.Second) // the audit log is written asynchronously
	writes, err := cp.WriteRequests(ctx, since, "cookbook-test-ssdry")
	if err != nil {
		t.Fatal(err)
	}
	if len(writes) != 0 {
		t.Errorf("dry-run made %d write request(s): %+v", len(writes), writes)
	}
	if got := podsOn(t, ns, "ssdry-1"); got["held"] != 1 || got["free"] != 1 {
		t.Errorf("pods changed in dry-run: %v -> %v", before, got)
	}
}

// TestNodesListedInPages lists more nodes than one page: every node comes back once, in
// list requests of the page size (client-go's chunking), and so does the health check.
func TestNodesListedInPages(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	addNodes(t, "page-1", "page-2", "page-3", "page-4", "page-5")
	all, err := cp.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var limits []string
	cfg := rest.CopyConfig(cp.RESTConfig)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if r.Method == http.MethodGet && r.URL.Path == "/api/v1/nodes" {
				mu.Lock()
				limits = append(limits, r.URL.Query().Get("limit"))
				mu.Unlock()
			}
			return rt.RoundTrip(r)
		})
	})
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	o := &Ops{Client: c, PageSize: 2}
	nodes, err := o.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, n := range nodes {
		seen[n.Name]++
	}
	for _, n := range all.Items {
		if seen[n.Name] != 1 {
			t.Errorf("node %s listed %d times", n.Name, seen[n.Name])
		}
	}
	if len(nodes) != len(all.Items) {
		t.Errorf("listed %d nodes, the cluster has %d", len(nodes), len(all.Items))
	}
	want := (len(all.Items) + 1) / 2
	mu.Lock()
	got := limits
	limits = nil
	mu.Unlock()
	if len(got) < want {
		t.Errorf("%d node list requests (limits %v), want at least %d pages of 2", len(got), got, want)
	}
	for _, l := range got {
		if l != "2" {
			t.Errorf("a node list asked for limit %q, want 2", l)
		}
	}
	if _, err := o.Health(ctx, GateOptions{}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(limits) < want {
		t.Errorf("the health check listed nodes in %d requests, want %d pages", len(limits), want)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// singletonBehindPDB runs in namespace ns one pod (Deployment singleton) whose PDB
// (minAvailable 1) allows no disruption, and waits until it runs.
func singletonBehindPDB(t *testing.T, ns string) {
	t.Helper()
	ctx := context.Background()
	cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if _, err := cp.Client.AppsV1().Deployments(ns).Create(ctx, lab.Deployment(ns, "singleton", 1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	removeDeployment(t, ns, "singleton")
	one := intstr.FromInt32(1)
	if _, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, lab.PDB(ns, "singleton", nil, &one), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running(t, ns, 1)
}
