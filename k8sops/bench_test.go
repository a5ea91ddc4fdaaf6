package k8sops

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"example.com/cookbook/lab"
)

// BenchmarkDrain drains a node carrying 100 pods with this package and an identical node
// with the lab-built `kubectl drain`, in the same run: 10 Deployments of 10 pods each with a
// PDB of maxUnavailable 1 ("pdb-bound"), and 100 pods of one Deployment without a PDB
// ("unconstrained"). Each reports seconds per drain, and the cookbook's time as a fraction
// of kubectl's. Run it with `make bench`.
func BenchmarkDrain(b *testing.B) {
	lab.Need(b, cp)
	for _, sc := range []struct {
		name        string
		deployments int
		pdb         bool
	}{{"pdb-bound", 10, true}, {"unconstrained", 1, false}} {
		b.Run(sc.name, func(b *testing.B) {
			var ours, theirs time.Duration
			for i := 0; i < b.N; i++ {
				o, k := drainRace(b, fmt.Sprintf("%s-%d", sc.name, i), sc.deployments, 100/sc.deployments, sc.pdb)
				ours += o
				theirs += k
			}
			b.ReportMetric(ours.Seconds()/float64(b.N), "cookbook-s/drain")
			b.ReportMetric(theirs.Seconds()/float64(b.N), "kubectl-s/drain")
			b.ReportMetric(ours.Seconds()/theirs.Seconds(), "ratio")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// drainRace sets up two identical nodes and drains one with Ops.Drain and the other with
// kubectl drain, returning both wall times.
func drainRace(b *testing.B, id string, deployments, replicas int, pdb bool) (ours, theirs time.Duration) {
	ctx := context.Background()
	a, k := "bench-"+id+"-ours", "bench-"+id+"-kubectl"
	targets := []string{"bench-" + id + "-t1", "bench-" + id + "-t2", "bench-" + id + "-t3"}
	for _, n := range append([]string{a, k}, targets...) {
		if err := cp.AddNode(ctx, lab.NodeSpec{Name: n, Labels: map[string]string{"bench": id}, Pods: 250}); err != nil {
			b.Fatal(err)
		}
		defer cp.RemoveNode(context.Background(), n)
	}
	o := &Ops{Client: cp.Client}
	cordon := func(name string, on bool) {
		patch := fmt.Sprintf(`{"spec":{"unschedulable":%t}}`, on)
		if _, err := cp.Client.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	place := func(node, ns string) {
		// Only node is schedulable while its pods are created.
		for _, n := range append([]string{a, k}, targets...) {
			cordon(n, n != node)
		}
		cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		for d := 0; d < deployments; d++ {
			name := fmt.Sprintf("app-%d", d)
			dep := lab.Deployment(ns, name, int32(replicas))
			dep.Spec.Template.Spec.NodeSelector = map[string]string{"bench": id}
			if _, err := cp.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			if pdb {
				one := intstr.FromInt32(1)
				if _, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, lab.PDB(ns, name, &one, nil), metav1.CreateOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		}
		err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
			pods, err := cp.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
			if err != nil {
				return false, err
			}
			running := 0
			for _, p := range pods.Items {
				if p.Status.Phase == corev1.PodRunning {
					running++
				}
			}
			if running < deployments*replicas {
				return false, nil
			}
			if !pdb {
				return true, nil
			}
			list, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, err
			}
			for _, p := range list.Items {
				if p.Status.DisruptionsAllowed < 1 {
					return false, nil
				}
			}
			return true, nil
		})
		if err != nil {
			b.Fatalf("pods of %s not running on %s: %v", ns, node, err)
		}
	}
	place(a, "bench-"+id+"-a")
	place(k, "bench-"+id+"-k")
	// Both drained nodes stay cordoned: the pods evicted from one go to the targets,
	// not to the other, which would then have more to drain.
	for _, n := range targets {
		cordon(n, false)
	}
	cordon(k, true)
	cordon(a, true)

	b.ResetTimer()
	start := time.Now()
	if err := o.Drain(ctx, a, DrainOptions{Timeout: 10 * time.Minute}); err != nil {
		b.Fatal(err)
	}
	ours = time.Since(start)
	start = time.Now()
	if out, err := cp.Kubectl(ctx, "drain", k, "--ignore-daemonsets", "--timeout=10m"); err != nil {
		b.Fatalf("kubectl drain: %v\n%s", err, out)
	}
	theirs = time.Since(start)
	b.StopTimer()
	b.Logf("%s: cookbook %s, kubectl %s", id, ours.Round(time.Millisecond), theirs.Round(time.Millisecond))
	return ours, theirs
}
