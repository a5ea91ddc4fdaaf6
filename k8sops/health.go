package k8sops

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// GateOptions configure the health gate between the batches of a rolling job.
type GateOptions struct {
	// Handling are the nodes the run is handling now: they may be NotReady.
	Handling []string
	// Handled are the nodes the run has finished: their pods must be Running again.
	Handled []string
	// Consecutive is how many good checks in a row pass the gate; 2 if zero (as kops
	// validates a cluster).
	Consecutive int
	// Interval between checks; 2s if zero.
	Interval time.Duration
	// Timeout bounds the wait; 5 minutes if zero.
	Timeout time.Duration
}

// Health checks the cluster once and returns what is unhealthy (nothing: healthy): every
// node Ready except those being handled; no disruption budget with fewer healthy pods
// than it requires; the pods of the handled nodes Running.
func (o *Ops) Health(ctx context.Context, opts GateOptions) ([]string, error) {
	var bad []string
	skip := map[string]bool{}
	for _, n := range opts.Handling {
		skip[n] = true
	}
	nodes, err := o.listNodes(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("health: list nodes: %w", err)
	}
	for i := range nodes {
		n := &nodes[i]
		if !skip[n.Name] && !IsReady(n) {
			bad = append(bad, fmt.Sprintf("node %s is not Ready (%s)", n.Name, describeReady(n)))
		}
	}
	pdbs, err := o.listPDBs(ctx, "", metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("health: list disruption budgets: %w", err)
	}
	for _, p := range pdbs {
		if p.Status.ObservedGeneration >= p.Generation && p.Status.CurrentHealthy < p.Status.DesiredHealthy {
			bad = append(bad, fmt.Sprintf("PDB %s/%s has %d healthy pod(s), needs %d", p.Namespace, p.Name, p.Status.CurrentHealthy, p.Status.DesiredHealthy))
		}
	}
	for _, node := range opts.Handled {
		pods, err := o.listPods(ctx, "", metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
		if err != nil {
			return nil, fmt.Errorf("health: list pods of %s: %w", node, err)
		}
		for _, p := range pods {
			if p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodRunning && p.Status.Phase != corev1.PodSucceeded {
				bad = append(bad, fmt.Sprintf("pod %s/%s on %s is %s", p.Namespace, p.Name, node, p.Status.Phase))
			}
		}
	}
	sort.Strings(bad)
	return bad, nil
}

// WaitHealthy waits until Health finds nothing wrong Consecutive times in a row. On
// timeout the error names what is still unhealthy.
func (o *Ops) WaitHealthy(ctx context.Context, opts GateOptions) error {
	need := opts.Consecutive
	if need == 0 {
		need = 2
	}
	interval := opts.Interval
	if interval == 0 {
		interval = 2 * time.Second
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	good := 0
	var last []string
	var checkErr error
	lastReport := time.Now()
	err := wait.PollUntilContextTimeout(ctx, interval, timeout, true, func(context.Context) (bool, error) {
		// Each check has its own bound, from ctx, so the gate's deadline cuts no check short.
		checkCtx, cancelCheck := context.WithTimeout(ctx, 30*time.Second)
		bad, err := o.Health(checkCtx, opts)
		cancelCheck()
		if err != nil {
			checkErr = err
			return false, err
		}
		last = bad
		if len(bad) == 0 {
			good++
			return good >= need, nil
		}
		good = 0
		if time.Since(lastReport) >= o.reportEvery() {
			o.log().Info("waiting for the cluster to be healthy", "unhealthy", strings.Join(bad, "; "))
			lastReport = time.Now()
		}
		return false, nil
	})
	switch {
	case err == nil:
		o.log().Info("cluster healthy", "checks", good)
		return nil
	case checkErr != nil:
		return checkErr
	case ctx.Err() != nil:
		return fmt.Errorf("health gate: %w", ctx.Err())
	default:
		return fmt.Errorf("health gate: %w after %s: %s", ErrTimeout, timeout, strings.Join(last, "; "))
	}
}
