package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"example.com/cookbook/lab"
)

// The PDB-bound drain of BenchmarkDrainPDB1000: pdbApps Deployments of pdbReplicas pods on
// the node, each with a PDB of maxUnavailable 1, so that each Deployment's pods leave one at
// a time, each waiting for the previous one's replacement to be Ready on a spare node.
const (
	pdbApps     = 100
	pdbReplicas = 10
	pdbSpares   = 4
)

// BenchmarkDrainPDB1000 drains a node of 1,000 pods bound by disruption budgets with the
// real cookbook binary (`cookbook drain`) and an identical node with the lab's `kubectl
// drain --ignore-daemonsets --delete-emptydir-data`, in the same lab and run, both nodes
// cordoned first, spare nodes with room for both. It reports each one's wall time and
// peak RSS (getrusage of the child; the cookbook's anonymous peak too), the evictions each had refused with 429 (from the
// API server's audit log), and fails if either drain let a Deployment fall below its
// budget (9 of 10 Running). Run it with `make bench`.
func BenchmarkDrainPDB1000(b *testing.B) {
	lab.Need(b, cp)
	bin := buildCookbook(b)
	w := labWorld(b)
	ctx := context.Background()
	var ours, theirs, oursReact, theirsReact time.Duration
	var oursRSS, oursAnon, theirsRSS, ours429, theirs429 int64
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("pdb1k-%d", i)
		a, k := placePDBBound(b, id+"-cookbook"), placePDBBound(b, id+"-kubectl")
		for s := 0; s < pdbSpares; s++ {
			n := fmt.Sprintf("bench-%s-spare-%d", id, s)
			if err := cp.AddNode(ctx, lab.NodeSpec{Name: n, Pods: 2 * pdbApps * pdbReplicas / pdbSpares * 6 / 5, Labels: map[string]string{"bench": id}}); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { cp.RemoveNode(context.Background(), n) })
		}
		watch := func(node string) func() {
			stop, err := cp.WatchFewestRunningPerApp(ctx, node, pdbReplicas)
			if err != nil {
				b.Fatal(err)
			}
			return func() {
				for app, n := range stop() {
					if n < pdbReplicas-1 {
						b.Errorf("PDB of %s/%s violated during the drain of %s: %d of %d Running (maxUnavailable 1)", node, app, node, n, pdbReplicas)
					}
				}
			}
		}
		run := func(node, ua string, cmd *exec.Cmd) (wall time.Duration, rss, anon, refused int64, react time.Duration) {
			check := watch(node)
			since := time.Now()
			var out strings.Builder
			cmd.Stdout, cmd.Stderr = &out, &out
			b.ResetTimer()
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			peakAnon := sampleAnon(cmd.Process.Pid)
			if err := cmd.Wait(); err != nil {
				b.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, tail(out.String(), 20))
			}
			wall = time.Since(since)
			anon = peakAnon() / 1024
			b.StopTimer()
			check()
			if left, err := cp.PodsOn(ctx, node, node); err != nil {
				b.Fatal(err)
			} else if n := sumCounts(left); n > 0 {
				b.Fatalf("%s drain of %s left %d pods on it", ua, node, n)
			}
			evs, err := cp.WriteRequests(ctx, since, ua)
			if err != nil {
				b.Fatal(err)
			}
			for _, ev := range evs {
				if ev.Subresource == "eviction" && ev.Code == 429 {
					refused++
				}
			}
			react = reaction(b, node, since, evs)
			rss = cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss / 1024
			b.Logf("%s drain of %s: %s, peak RSS %d MB (anonymous %d MB), %d evictions refused (429), %s on average from a PDB's status update to its next eviction",
				ua, node, wall.Round(time.Millisecond), rss, anon, refused, react.Round(time.Millisecond))
			return wall, rss, anon, refused, react
		}
		o, orss, oanon, o429, oreact := run(a, "cookbook", exec.Command(bin, "--config", w.config, "--state-dir", w.stateDir, "--yes",
			"drain", "--cluster-name", "lab1", "--hostname-to-drain", a, "--delete-emptydir-data", "--drain-timeout", "15m"))
		t, trss, _, t429, treact := run(k, "kubectl", exec.Command(filepath.Join(cp.BinDir, "kubectl"), "--kubeconfig", cp.Kubeconfig,
			"drain", k, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=15m"))
		ours, theirs = ours+o, theirs+t
		oursRSS, oursAnon, theirsRSS = max(oursRSS, orss), max(oursAnon, oanon), max(theirsRSS, trss)
		ours429, theirs429 = ours429+o429, theirs429+t429
		oursReact, theirsReact = oursReact+oreact, theirsReact+treact
	}
	b.ReportMetric(ours.Seconds()/float64(b.N), "cookbook-s/drain")
	b.ReportMetric(theirs.Seconds()/float64(b.N), "kubectl-s/drain")
	b.ReportMetric(ours.Seconds()/theirs.Seconds(), "ratio")
	b.ReportMetric(float64(oursRSS), "peak-RSS-MB")
	b.ReportMetric(float64(oursAnon), "peak-anon-MB")
	b.ReportMetric(float64(theirsRSS), "kubectl-peak-RSS-MB")
	b.ReportMetric(float64(ours429)/float64(b.N), "cookbook-429s/drain")
	b.ReportMetric(float64(theirs429)/float64(b.N), "kubectl-429s/drain")
	b.ReportMetric(oursReact.Seconds()/float64(b.N), "cookbook-react-s")
	b.ReportMetric(theirsReact.Seconds()/float64(b.N), "kubectl-react-s")
	b.ReportMetric(0, "ns/op")
}

// reaction is how long, on average, a drain of node took to send a granted eviction after
// the disruption controller's last status update of the pod's PDB (the update that let it
// go), from the audit log: the drain's own share of each PDB-bound step; the rest is the
// cluster's (replacement pod Ready, then the disruption controller's update). evs are the
// drain's write requests since since; the first eviction of each PDB, which followed no
// update, is left out.
func reaction(b *testing.B, node string, since time.Time, evs []lab.AuditEvent) time.Duration {
	all, err := cp.WriteRequests(context.Background(), since, "")
	if err != nil {
		b.Fatal(err)
	}
	updates := map[string][]time.Time{} // PDB -> status update times, in order
	for _, ev := range all {
		// The controller's updates only: an eviction writes the status too (the API
		// server's own request).
		if ev.Namespace == node && ev.Resource == "poddisruptionbudgets" && ev.Subresource == "status" && strings.Contains(ev.UserAgent, "kube-controller-manager") {
			updates[ev.Name] = append(updates[ev.Name], ev.Time)
		}
	}
	var sum time.Duration
	n := 0
	for _, ev := range evs {
		if ev.Subresource != "eviction" || ev.Code/100 != 2 || len(ev.Name) < 7 {
			continue
		}
		var last time.Time
		for _, t := range updates[ev.Name[:7]] { // pods app-NNN-…, PDBs app-NNN
			if t.After(ev.Time) {
				break
			}
			last = t
		}
		if !last.IsZero() {
			sum += ev.Time.Sub(last)
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / time.Duration(n)
}

// placePDBBound adds the node bench-ID (labelled bench=ID minus its last part, so the spares
// of both nodes of a run take either's pods) and puts on it, in namespace bench-ID,
// pdbApps Deployments of pdbReplicas pods with a PDB of maxUnavailable 1 each, and waits
// until they run and every PDB allows a disruption, then cordons the node. It returns the
// node, also the namespace's name.
func placePDBBound(b *testing.B, id string) string {
	ctx := context.Background()
	node := "bench-" + id
	group := id[:strings.LastIndex(id, "-")]
	if err := cp.AddNode(ctx, lab.NodeSpec{Name: node, Pods: pdbApps*pdbReplicas + 50, Labels: map[string]string{"bench": group}}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cp.RemoveNode(context.Background(), node) })
	if _, err := cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cp.Client.CoreV1().Namespaces().Delete(context.Background(), node, metav1.DeleteOptions{}) })
	one := intstr.FromInt32(1)
	var wg sync.WaitGroup
	errs := make(chan error, pdbApps)
	sem := make(chan struct{}, 8)
	for d := 0; d < pdbApps; d++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			name := fmt.Sprintf("app-%03d", d)
			dep := lab.Deployment(node, name, pdbReplicas)
			dep.Spec.Template.Spec.NodeSelector = map[string]string{"bench": group}
			if _, err := cp.Client.AppsV1().Deployments(node).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
				errs <- err
				return
			}
			if _, err := cp.Client.PolicyV1().PodDisruptionBudgets(node).Create(ctx, lab.PDB(node, name, &one, nil), metav1.CreateOptions{}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	start := time.Now()
	err := cp.WaitWorkload(ctx, lab.Workload{Namespace: node, Deployments: pdbApps, Replicas: pdbReplicas, MaxUnavailable: 1}, 10*time.Minute, nil)
	if err != nil {
		b.Fatalf("pods of %s: %v", node, err)
	}
	if on, err := cp.PodsOn(ctx, node, node); err != nil {
		b.Fatal(err)
	} else if n := sumCounts(on); n != pdbApps*pdbReplicas {
		b.Fatalf("%d pods of %s on %s, want %d", n, node, node, pdbApps*pdbReplicas)
	}
	b.Logf("%d pods under %d PDBs running on %s in %s", pdbApps*pdbReplicas, pdbApps, node, time.Since(start).Round(time.Second))
	// Cordoned before the other node's pods are placed and the spares join, so that
	// neither drain's pods land on the other's node.
	if _, err := cp.Client.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, []byte(`{"spec":{"unschedulable":true}}`), metav1.PatchOptions{}); err != nil {
		b.Fatal(err)
	}
	return node
}

func sumCounts(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
