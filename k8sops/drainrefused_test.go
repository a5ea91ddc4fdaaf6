package k8sops

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"example.com/cookbook/lab"
)

// evictionCounts are the eviction requests a client sent and those refused with 429.
type evictionCounts struct{ sent, refused atomic.Int64 }

// countEvictions makes o's client (user agent ua) count its eviction requests; hide, if
// not empty, is a label selector put on its every request about disruption budgets, so a
// budget without that label is one the drain never sees (one the API server applies all
// the same).
func countEvictions(t *testing.T, o *Ops, ua, hide string) *evictionCounts {
	t.Helper()
	var n evictionCounts
	cfg := rest.CopyConfig(cp.RESTConfig)
	cfg.UserAgent = ua
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if hide != "" && strings.Contains(r.URL.Path, "/poddisruptionbudgets") {
				r = r.Clone(r.Context())
				q := r.URL.Query()
				q.Set("labelSelector", hide)
				r.URL.RawQuery = q.Encode()
			}
			resp, err := rt.RoundTrip(r)
			if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/eviction") {
				n.sent.Add(1)
				if err == nil && resp.StatusCode == http.StatusTooManyRequests {
					n.refused.Add(1)
				}
			}
			return resp, err
		})
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	o.Client = c
	return &n
}

// podBehindBudget runs, in a new namespace ns, one pod (Deployment single) on a new node
// of the same name, under the budget pdb (minAvailable 1: it allows no disruption), and
// waits until the disruption controller has counted the pod in it. The namespace, then
// the node, go at the end of the test.
func podBehindBudget(t *testing.T, ns string, pdb *policyv1.PodDisruptionBudget) {
	t.Helper()
	ctx := context.Background()
	if err := cp.AddNode(ctx, lab.NodeSpec{Name: ns, Labels: map[string]string{"test": ns}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.RemoveNode(context.Background(), ns) })
	if _, err := cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.DeleteNamespace(context.Background(), ns, 2*time.Minute); err != nil {
			t.Error(err)
		}
	})
	dep := lab.Deployment(ns, "single", 1)
	dep.Spec.Template.Spec.NodeSelector = map[string]string{"test": ns}
	if _, err := cp.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, pdb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running(t, ns, 1)
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, pdb.Name, metav1.GetOptions{})
		return err == nil && p.Status.ObservedGeneration == p.Generation && p.Status.ExpectedPods == 1 && p.Status.CurrentHealthy == 1 && p.Status.DisruptionsAllowed == 0, nil
	})
	if err != nil {
		t.Fatalf("the disruption controller does not count the pod in budget %s/%s: %v", ns, pdb.Name, err)
	}
}

// drainReleased drains node ns in the background and, after hold, lets the budget go
// with release; it returns the drain's error and how long it took.
func drainReleased(t *testing.T, o *Ops, ns string, hold time.Duration, release func(context.Context) error) (time.Duration, error) {
	t.Helper()
	ctx := context.Background()
	if _, err := o.Cordon(ctx, ns); err != nil {
		t.Fatal(err)
	}
	since := time.Now()
	done := make(chan error, 1)
	go func() { done <- o.Drain(ctx, ns, DrainOptions{Timeout: time.Minute}) }()
	select {
	case err := <-done:
		t.Fatalf("the drain ended before the budget let the pod go: %v", err)
	case <-time.After(hold):
	}
	if err := release(ctx); err != nil {
		t.Fatal(err)
	}
	err := <-done
	return time.Since(since), err
}

// TestDrainEmptySelectorPDB: a budget of selector {} selects every pod of its namespace
// (policy/v1; the API server and the disruption controller apply it so). The plan names
// it as blocking, and the drain waits on its status, asking for the eviction once it
// allows one, not in a loop of refusals (a drain that took it for a budget of no pod sent
// hundreds of evictions a second, each refused with 429).
func TestDrainEmptySelectorPDB(t *testing.T) {
	lab.Need(t, cp)
	ns := "drain-emptysel"
	one := intstr.FromInt32(1)
	pdb := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "everything", Namespace: ns},
		Spec:       policyv1.PodDisruptionBudgetSpec{Selector: &metav1.LabelSelector{}, MinAvailable: &one},
	}
	podBehindBudget(t, ns, pdb)
	o, logs := newOps(t, "", false)
	n := countEvictions(t, o, "cookbook-test-emptysel", "")

	plan, err := o.PlanDrain(context.Background(), ns, DrainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.PDBs) != 1 || plan.PDBs[0].Name != "everything" || !plan.PDBs[0].WouldBlock() {
		t.Fatalf("plan's budgets = %v, want %s/everything (selector {}) blocking", plan.PDBs, ns)
	}

	took, err := drainReleased(t, o, ns, 3*time.Second, func(ctx context.Context) error {
		_, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Patch(ctx, "everything", types.MergePatchType,
			[]byte(`{"spec":{"minAvailable":0}}`), metav1.PatchOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("drain: %v\n%s", err, logs)
	}
	t.Logf("drain took %s: %d eviction request(s), %d refused (429)", took.Round(time.Millisecond), n.sent.Load(), n.refused.Load())
	if got := podsOn(t, ns, ns); len(got) > 0 {
		t.Errorf("pods left on %s: %v", ns, got)
	}
	if s := n.sent.Load(); s < 1 || s > 3 {
		t.Errorf("%d eviction requests (%d refused) for one pod whose budget was released once; want 1 to 3", s, n.refused.Load())
	}
	if !strings.Contains(logs.String(), "PDB "+ns+"/everything allows 0 disruption(s)") {
		t.Errorf("the drain's log does not name the budget it waits on:\n%s", logs)
	}
}

// TestDrainUnknownBudgetWaits: an eviction the API server refuses (429) for a budget the
// drain does not know of (here one its client cannot see) is asked for again only after a
// budget change or the budget resync interval (5 s), never at once; the wait names the
// budget from the API server's refusal.
func TestDrainUnknownBudgetWaits(t *testing.T) {
	lab.Need(t, cp)
	ns := "drain-unknownpdb"
	one := intstr.FromInt32(1)
	podBehindBudget(t, ns, lab.PDB(ns, "single", nil, &one))
	o, logs := newOps(t, "", false)
	n := countEvictions(t, o, "cookbook-test-unknownpdb", "cookbook-test=visible")

	took, err := drainReleased(t, o, ns, 3*time.Second, func(ctx context.Context) error {
		return cp.Client.PolicyV1().PodDisruptionBudgets(ns).Delete(ctx, "single", metav1.DeleteOptions{})
	})
	if err != nil {
		t.Fatalf("drain: %v\n%s", err, logs)
	}
	t.Logf("drain took %s: %d eviction request(s), %d refused (429)", took.Round(time.Millisecond), n.sent.Load(), n.refused.Load())
	if got := podsOn(t, ns, ns); len(got) > 0 {
		t.Errorf("pods left on %s: %v", ns, got)
	}
	// Refused at once, then once per resync interval until the budget is gone.
	if s := n.sent.Load(); s < 2 || s > 4 {
		t.Errorf("%d eviction requests (%d refused) in %s for one pod; want 2 to 4 (one per %s while refused)", s, n.refused.Load(), took.Round(time.Millisecond), budgetResync)
	}
	if !strings.Contains(logs.String(), "The disruption budget single needs 1 healthy pods") {
		t.Errorf("the drain's log does not give the API server's reason for the refusal:\n%s", logs)
	}
}

// TestPDBSelects: a budget's selector as policy/v1 reads it: {} selects every pod of the
// budget's namespace, nil none, and a pod of another namespace is never selected.
func TestPDBSelects(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p", Labels: map[string]string{"app": "web"}}}
	for _, tc := range []struct {
		name string
		ns   string
		sel  *metav1.LabelSelector
		want bool
	}{
		{"empty selector", "a", &metav1.LabelSelector{}, true},
		{"nil selector", "a", nil, false},
		{"matching labels", "a", &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}, true},
		{"other labels", "a", &metav1.LabelSelector{MatchLabels: map[string]string{"app": "api"}}, false},
		{"empty selector, other namespace", "b", &metav1.LabelSelector{}, false},
		{"invalid selector", "a", &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Bogus"}}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pdb := &policyv1.PodDisruptionBudget{ObjectMeta: metav1.ObjectMeta{Namespace: tc.ns, Name: "b"}, Spec: policyv1.PodDisruptionBudgetSpec{Selector: tc.sel}}
			if got := selects(pdb, pod); got != tc.want {
				t.Errorf("selects = %v, want %v", got, tc.want)
			}
			if got := newWatchedPDB(pdb).selects(pod); got != tc.want {
				t.Errorf("watched selects = %v, want %v", got, tc.want)
			}
		})
	}
}
