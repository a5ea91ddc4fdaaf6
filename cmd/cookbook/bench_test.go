package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"example.com/cookbook/lab"
)

// Cluster size for BenchmarkDrainMemory: fillerNodes nodes of fillerPods pods each, besides
// the node drained and its 100 pods.
const (
	fillerNodes = 50
	fillerPods  = 198
)

// BenchmarkDrainMemory runs the real cookbook binary's drain cookbook on a node of 100 pods
// (10 Deployments with a PDB of maxUnavailable 1) in a lab cluster of 10,000 pods, and
// reports the cookbook process's peak RSS (getrusage of the child) and wall time. Run it
// with `make bench`.
func BenchmarkDrainMemory(b *testing.B) {
	lab.Need(b, cp)
	bin := buildCookbook(b)
	// The filler is created fast by a client of its own, not rate-limited like the lab's.
	cfg := rest.CopyConfig(cp.RESTConfig)
	cfg.QPS, cfg.Burst = 2000, 4000
	fast, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	w := labWorld(b)
	runs := 0 // the benchmark function runs more than once: new names each time
	drain := func(b *testing.B, id string) {
		var wall time.Duration
		var peak, peakAnon int64
		for i := 0; i < b.N; i++ {
			runs++
			node := placeOnNode(b, fmt.Sprintf("%s-%d", id, runs))
			pods := countPods(b, fast)
			b.ResetTimer()
			start := time.Now()
			cmd := exec.Command(bin, "--config", w.config, "--state-dir", w.stateDir, "--yes",
				"drain", "--cluster-name", "lab1", "--hostname-to-drain", node)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			anon := sampleAnon(cmd.Process.Pid)
			if err := cmd.Wait(); err != nil {
				b.Fatalf("cookbook drain %s: %v\n%s", node, err, stderr.String())
			}
			peakAnon = max(peakAnon, anon())
			wall += time.Since(start)
			b.StopTimer()
			rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss // kilobytes on Linux
			peak = max(peak, rss)
			b.Logf("drain of %s in a cluster of %d pods: %s, peak RSS %d MB, of it anonymous %d MB", node, pods, time.Since(start).Round(time.Millisecond), rss/1024, peakAnon/1024)
		}
		b.ReportMetric(wall.Seconds()/float64(b.N), "cookbook-s/drain")
		b.ReportMetric(float64(peak)/1024, "peak-RSS-MB")
		b.ReportMetric(float64(peakAnon)/1024, "peak-anon-MB")
		b.ReportMetric(0, "ns/op")
	}
	// The same drain in the lab before and after it holds 10,000 pods: the cookbook lists
	// and watches only the node's pods and their PDBs, so the figures should not move.
	b.Run("drain-memory-in-empty-lab", func(b *testing.B) { drain(b, "mem-empty") })
	start := time.Now()
	fillCluster(b, fast)
	total := countPods(b, fast)
	b.Logf("cluster filled: %d pods in %s", total, time.Since(start).Round(time.Second))
	b.Run(fmt.Sprintf("drain-memory-in-%d-pod-lab", (total+100)/1000*1000), func(b *testing.B) { drain(b, "mem-full") })
}

// sampleAnon samples the anonymous memory (heap, stacks: RssAnon) of process pid every
// 5 ms until it exits; the returned function waits for that and returns the peak in KB.
// The rest of the peak RSS getrusage reports is the binary's own code, mapped from its file.
func sampleAnon(pid int) func() int64 {
	done := make(chan int64, 1)
	go func() {
		var peak int64
		path := fmt.Sprintf("/proc/%d/status", pid)
		for {
			data, err := os.ReadFile(path)
			if err != nil {
				done <- peak
				return
			}
			var kb int64
			for _, line := range strings.Split(string(data), "\n") {
				if rest, ok := strings.CutPrefix(line, "RssAnon:"); ok {
					fmt.Sscan(rest, &kb)
				}
			}
			if kb == 0 && !strings.Contains(string(data), "RssAnon:") {
				done <- peak
				return
			}
			peak = max(peak, kb)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return func() int64 { return <-done }
}

// fillCluster adds fillerNodes kwok nodes and binds fillerPods pods to each: pods of the
// size of a real workload's (labels, resources, environment), Running under kwok.
func fillCluster(b *testing.B, c kubernetes.Interface) {
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, fillerNodes)
	sem := make(chan struct{}, 16)
	for n := 0; n < fillerNodes; n++ {
		node := fmt.Sprintf("mem-filler-%d", n)
		ns := node
		if err := cp.AddNode(ctx, lab.NodeSpec{Name: node, Pods: 250, Labels: map[string]string{"bench": "filler"}}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cp.RemoveNode(context.Background(), node) })
		if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
		for p := 0; p < fillerPods; p++ {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				if _, err := c.CoreV1().Pods(ns).Create(ctx, fillerPod(ns, node, p), metav1.CreateOptions{}); err != nil {
					select {
					case errs <- fmt.Errorf("create filler pod %d on %s: %w", p, node, err):
					default:
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

func fillerPod(ns, node string, i int) *corev1.Pod {
	app := fmt.Sprintf("tool-%d", i%40)
	var env []corev1.EnvVar
	for e := 0; e < 8; e++ {
		env = append(env, corev1.EnvVar{Name: fmt.Sprintf("TOOL_SETTING_%d", e), Value: strings.Repeat("x", 24)})
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        fmt.Sprintf("%s-%d", app, i),
			Namespace:   ns,
			Labels:      map[string]string{"app": app, "toolforge": "tool", "app.kubernetes.io/component": "web"},
			Annotations: map[string]string{"bench": "filler"},
		},
		Spec: corev1.PodSpec{
			NodeName: node, // bound here: the scheduler is not what this benchmark measures
			Containers: []corev1.Container{{
				Name:    "webservice",
				Image:   "docker-registry.tools.wmflabs.org/toolforge-python311-sssd-web:latest",
				Command: []string{"/usr/bin/webservice-runner", "--type", "uwsgi-python", "--port", "8000"},
				Env:     env,
				Ports:   []corev1.ContainerPort{{Name: "http", ContainerPort: 8000}},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("125m"), corev1.ResourceMemory: resource.MustParse("256Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("512Mi")},
				},
				VolumeMounts: []corev1.VolumeMount{{Name: "home", MountPath: "/data/project"}},
			}},
			Volumes: []corev1.Volume{{Name: "home", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/data/project"}}}},
		},
	}
}

func countPods(b *testing.B, c kubernetes.Interface) int {
	n := 0
	opts := metav1.ListOptions{Limit: 500}
	for {
		list, err := c.CoreV1().Pods("").List(context.Background(), opts)
		if err != nil {
			b.Fatal(err)
		}
		n += len(list.Items)
		if list.Continue == "" {
			return n
		}
		opts.Continue = list.Continue
	}
}

// placeOnNode creates a node with 100 pods of 10 Deployments, each with a PDB of
// maxUnavailable 1, and two nodes for them to move to; it returns the node to drain.
func placeOnNode(b *testing.B, id string) string {
	ctx := context.Background()
	node, ns := "bench-"+id, "bench-"+id
	spares := []string{"bench-" + id + "-spare-1", "bench-" + id + "-spare-2"}
	if err := cp.AddNode(ctx, lab.NodeSpec{Name: node, Pods: 250, Labels: map[string]string{"bench": id}}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cp.RemoveNode(context.Background(), node) })
	if _, err := cp.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cp.Client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	one := intstr.FromInt32(1)
	for d := 0; d < 10; d++ {
		name := fmt.Sprintf("app-%d", d)
		dep := lab.Deployment(ns, name, 10)
		dep.Spec.Template.Spec.NodeSelector = map[string]string{"bench": id}
		if _, err := cp.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		if _, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, lab.PDB(ns, name, &one, nil), metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	if err := cp.WaitPodsRunning(ctx, ns, 100, 5*time.Minute); err != nil {
		b.Fatalf("pods of %s: %v", ns, err)
	}
	// The spares join once the pods are on node, so that the drain has somewhere to go.
	for _, n := range spares {
		if err := cp.AddNode(ctx, lab.NodeSpec{Name: n, Pods: 250, Labels: map[string]string{"bench": id}}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cp.RemoveNode(context.Background(), n) })
	}
	return node
}

// buildCookbook builds the cookbook binary into the benchmark's temp dir: a benchmark
// measures the process an operator runs (its own RSS, its own requests).
func buildCookbook(b *testing.B) string {
	bin := filepath.Join(b.TempDir(), "cookbook")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}
