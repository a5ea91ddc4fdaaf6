package lab

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
)

// WaitPodsRunning waits until at least n pods of the namespace are Running and not
// terminating.
func (cp *ControlPlane) WaitPodsRunning(ctx context.Context, ns string, n int, timeout time.Duration) error {
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		pods, err := cp.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		running := 0
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
				running++
			}
		}
		return running >= n, nil
	})
	if err != nil {
		return fmt.Errorf("wait for %d running pods in %s: %w", n, ns, err)
	}
	return nil
}

// PodsOn counts the pods of the namespace bound to node, by their app label; terminating
// pods are left out.
func (cp *ControlPlane) PodsOn(ctx context.Context, ns, node string) (map[string]int, error) {
	pods, err := cp.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return nil, fmt.Errorf("pods of %s on %s: %w", ns, node, err)
	}
	out := map[string]int{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			out[p.Labels["app"]]++
		}
	}
	return out, nil
}

// WatchFewestRunning watches the pods labelled app=app in ns and records the fewest of
// them Running (and not terminating) at any moment, once want of them were seen: what a
// test compares with a PodDisruptionBudget. stop ends the watch and returns that number.
func (cp *ControlPlane) WatchFewestRunning(ctx context.Context, ns, app string, want int) (stop func() int, err error) {
	stopAll, err := cp.watchFewest(ctx, ns, "app="+app, want)
	if err != nil {
		return nil, err
	}
	return func() int {
		if n, ok := stopAll()[app]; ok {
			return n
		}
		return want
	}, nil
}

// WatchFewestRunningPerApp is WatchFewestRunning for every app label of the namespace at
// once, with one watch: stop returns, per app label, the fewest of its pods Running at any
// moment once want of them were seen (apps never seen that many times are left out).
func (cp *ControlPlane) WatchFewestRunningPerApp(ctx context.Context, ns string, want int) (stop func() map[string]int, err error) {
	return cp.watchFewest(ctx, ns, "app", want)
}

func (cp *ControlPlane) watchFewest(ctx context.Context, ns, selector string, want int) (stop func() map[string]int, err error) {
	ctx, cancel := context.WithCancel(ctx)
	w, err := cp.Client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch pods of %s (%s): %w", ns, selector, err)
	}
	var mu sync.Mutex
	fewest := map[string]int{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		up := map[string]map[string]bool{} // app -> pod -> Running
		running := map[string]int{}
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			app := p.Labels["app"]
			if up[app] == nil {
				up[app] = map[string]bool{}
			}
			now := ev.Type != watch.Deleted && p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning
			if was := up[app][p.Name]; was != now {
				if now {
					running[app]++
				} else {
					running[app]--
				}
			}
			up[app][p.Name] = now
			mu.Lock()
			if len(up[app]) >= want {
				if f, ok := fewest[app]; !ok || running[app] < f {
					fewest[app] = min(running[app], want)
				}
			}
			mu.Unlock()
		}
	}()
	return func() map[string]int {
		cancel()
		w.Stop()
		<-done
		mu.Lock()
		defer mu.Unlock()
		return fewest
	}, nil
}
