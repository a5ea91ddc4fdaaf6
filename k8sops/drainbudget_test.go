package k8sops

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"example.com/cookbook/lab"
)

// TestDrainPDBBoundAsksEachBudgetOnce drains a node of 100 pods, 10 Deployments of 10 each
// with a PDB of maxUnavailable 1: no Deployment may fall below 9 Running, every pod must
// leave, and the drain must ask each budget for one eviction at a time, not once per
// waiting pod: a drain that sends every eviction at once and again at each budget change
// has 90 refused (429) at the start alone.
func TestDrainPDBBoundAsksEachBudgetOnce(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	const apps, replicas = 10, 10
	node, ns := "budget-drain", "budget-drain"
	if err := cp.AddNode(ctx, lab.NodeSpec{Name: node, Pods: 150, Labels: map[string]string{"bench": ns}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.RemoveNode(context.Background(), node) })
	if _, err := cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.DeleteNamespace(context.Background(), ns, 2*time.Minute); err != nil {
			t.Error(err)
		}
	})
	one := intstr.FromInt32(1)
	for d := 0; d < apps; d++ {
		name := fmt.Sprintf("app-%03d", d)
		dep := lab.Deployment(ns, name, replicas)
		dep.Spec.Template.Spec.NodeSelector = map[string]string{"bench": ns}
		if _, err := cp.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, lab.PDB(ns, name, &one, nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := cp.WaitWorkload(ctx, lab.Workload{Namespace: ns, Deployments: apps, Replicas: replicas, MaxUnavailable: 1}, 3*time.Minute, nil); err != nil {
		t.Fatal(err)
	}
	// The spares join once every pod is on the node.
	for _, n := range []string{node + "-spare-1", node + "-spare-2"} {
		if err := cp.AddNode(ctx, lab.NodeSpec{Name: n, Pods: 150, Labels: map[string]string{"bench": ns}}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cp.RemoveNode(context.Background(), n) })
	}
	// Cleanups run last first: the namespace goes while the spares still run its pods (pods
	// on a removed node wait for the pod garbage collector, about a minute).
	t.Cleanup(func() {
		if err := cp.DeleteNamespace(context.Background(), ns, 2*time.Minute); err != nil {
			t.Error(err)
		}
	})
	o, logs := newOps(t, "cookbook-test-budget-drain", false)
	if _, err := o.Cordon(ctx, node); err != nil {
		t.Fatal(err)
	}
	stop, err := cp.WatchFewestRunningPerApp(ctx, ns, replicas)
	if err != nil {
		t.Fatal(err)
	}
	since := time.Now()
	err = o.Drain(ctx, node, DrainOptions{Timeout: 3 * time.Minute})
	took := time.Since(since)
	fewest := stop()
	if err != nil {
		t.Fatalf("drain: %v\n%s", err, logs)
	}
	if got := podsOn(t, ns, node); len(got) > 0 {
		t.Errorf("pods left on %s: %v", node, got)
	}
	if len(fewest) != apps {
		t.Errorf("the watch saw %d of %d Deployments at full strength: %v", len(fewest), apps, fewest)
	}
	for app, n := range fewest {
		if n < replicas-1 {
			t.Errorf("PDB of %s violated: %d of %d Running (maxUnavailable 1)", app, n, replicas)
		}
	}
	evs, err := cp.WriteRequests(ctx, since, "cookbook-test-budget-drain")
	if err != nil {
		t.Fatal(err)
	}
	granted, refused := 0, 0
	for _, ev := range evs {
		if ev.Subresource == "eviction" {
			switch ev.Code {
			case 201, 200:
				granted++
			case 429:
				refused++
			}
		}
	}
	t.Logf("drain of %d pods in %s: %d evictions granted, %d refused (429)", apps*replicas, took.Round(time.Millisecond), granted, refused)
	if granted != apps*replicas {
		t.Errorf("%d evictions granted, want %d", granted, apps*replicas)
	}
	// A refusal is a budget's status arriving here after the eviction's: rare.
	if refused > apps*replicas/4 {
		t.Errorf("%d evictions refused (429) for %d pods: the drain asks budgets that allow no disruption", refused, apps*replicas)
	}
}
