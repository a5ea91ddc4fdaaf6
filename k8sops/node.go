package k8sops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
)

// Node returns the node.
func (o *Ops) Node(ctx context.Context, name string) (*corev1.Node, error) {
	n, err := o.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get node %s: %w", name, err)
	}
	return n, nil
}

// Cordon marks the node unschedulable and reports whether it already was (cordoned by
// someone else before): the caller records that, so it never uncordons a node an
// administrator had cordoned.
func (o *Ops) Cordon(ctx context.Context, name string) (wasCordoned bool, err error) {
	n, err := o.Node(ctx, name)
	if err != nil {
		return false, err
	}
	if n.Spec.Unschedulable {
		o.log().Info("node already cordoned", "node", name)
		return true, nil
	}
	return false, o.setUnschedulable(ctx, name, true)
}

// Uncordon marks the node schedulable (a no-op if it is).
func (o *Ops) Uncordon(ctx context.Context, name string) error {
	n, err := o.Node(ctx, name)
	if err != nil {
		return err
	}
	if !n.Spec.Unschedulable {
		return nil
	}
	return o.setUnschedulable(ctx, name, false)
}

func (o *Ops) setUnschedulable(ctx context.Context, name string, on bool) error {
	verb := "cordon"
	if !on {
		verb = "uncordon"
	}
	patch := fmt.Sprintf(`{"spec":{"unschedulable":%t}}`, on)
	return o.write(ctx, verb+" node "+name, verb+" of node "+name, func(ctx context.Context, dryRun []string) error {
		_, err := o.Client.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{DryRun: dryRun})
		if err != nil {
			return fmt.Errorf("%s %s: %w", verb, name, err)
		}
		return nil
	})
}

// ApplyLabels sets the labels on the node with one patch (no read-modify-write race);
// labels already set to the value are left alone, and nothing is written when all are.
func (o *Ops) ApplyLabels(ctx context.Context, name string, labels map[string]string) error {
	n, err := o.Node(ctx, name)
	if err != nil {
		return err
	}
	missing := map[string]string{}
	for k, v := range labels {
		if n.Labels[k] != v {
			missing[k] = v
		}
	}
	if len(missing) == 0 {
		return nil
	}
	data, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": missing}})
	return o.write(ctx, fmt.Sprintf("label node %s %s", name, kv(missing)), "labelling of node "+name, func(ctx context.Context, dryRun []string) error {
		_, err := o.Client.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, data, metav1.PatchOptions{DryRun: dryRun})
		if err != nil {
			return fmt.Errorf("label %s: %w", name, err)
		}
		return nil
	})
}

// Taint is a node taint: key, value and effect (NoSchedule, PreferNoSchedule, NoExecute).
type Taint struct {
	Key, Value, Effect string
}

// ApplyTaints adds the taints the node lacks. The patch carries the resource version it
// was computed from, so a concurrent change makes it fail (and retry) instead of losing
// a taint.
func (o *Ops) ApplyTaints(ctx context.Context, name string, taints []Taint) error {
	for attempt := 0; ; attempt++ {
		n, err := o.Node(ctx, name)
		if err != nil {
			return err
		}
		all := append([]corev1.Taint(nil), n.Spec.Taints...)
		var added []string
		for _, t := range taints {
			if !hasTaint(all, t) {
				all = append(all, corev1.Taint{Key: t.Key, Value: t.Value, Effect: corev1.TaintEffect(t.Effect)})
				added = append(added, fmt.Sprintf("%s=%s:%s", t.Key, t.Value, t.Effect))
			}
		}
		if len(added) == 0 {
			return nil
		}
		data, _ := json.Marshal(map[string]any{
			"metadata": map[string]any{"resourceVersion": n.ResourceVersion},
			"spec":     map[string]any{"taints": all},
		})
		err = o.write(ctx, fmt.Sprintf("taint node %s %s", name, strings.Join(added, ",")), "tainting of node "+name, func(ctx context.Context, dryRun []string) error {
			_, err := o.Client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, data, metav1.PatchOptions{DryRun: dryRun})
			return err
		})
		if apierrors.IsConflict(err) && attempt < 5 {
			continue
		}
		if err != nil {
			return fmt.Errorf("taint %s: %w", name, err)
		}
		return nil
	}
}

func hasTaint(ts []corev1.Taint, t Taint) bool {
	for _, x := range ts {
		if x.Key == t.Key && x.Value == t.Value && string(x.Effect) == t.Effect {
			return true
		}
	}
	return false
}

// DeleteNode deletes the Node object (a no-op if it is gone).
func (o *Ops) DeleteNode(ctx context.Context, name string) error {
	return o.write(ctx, "delete node "+name, "deletion of node "+name, func(ctx context.Context, dryRun []string) error {
		opts := metav1.DeleteOptions{DryRun: dryRun}
		err := withDryRun(o.Client.CoreV1().RESTClient().Delete().Resource("nodes").Name(name), dryRun).Body(&opts).Do(ctx).Error()
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete node %s: %w", name, err)
		}
		return nil
	})
}

// IsReady reports whether the node's Ready condition is True.
func IsReady(n *corev1.Node) bool {
	c := readyCondition(n)
	return c != nil && c.Status == corev1.ConditionTrue
}

func readyCondition(n *corev1.Node) *corev1.NodeCondition {
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == corev1.NodeReady {
			return &n.Status.Conditions[i]
		}
	}
	return nil
}

// describeReady says how the node's Ready condition stands, for wait messages.
func describeReady(n *corev1.Node) string {
	if n == nil {
		return "node not found"
	}
	c := readyCondition(n)
	if c == nil {
		return "no Ready condition yet"
	}
	s := fmt.Sprintf("Ready=%s", c.Status)
	if c.Reason != "" {
		s += " reason=" + c.Reason
	}
	return s
}

// ErrTimeout is wrapped by waits that ran out of time.
var ErrTimeout = errors.New("timed out")

// WaitNode watches the node until cond holds (cond gets nil when the node does not exist),
// reporting how its Ready condition stands every few seconds while it waits.
func (o *Ops) WaitNode(ctx context.Context, name, what string, timeout time.Duration, cond func(*corev1.Node) bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			opts.FieldSelector = sel
			return o.Client.CoreV1().Nodes().List(ctx, opts)
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			opts.FieldSelector = sel
			return o.Client.CoreV1().Nodes().Watch(ctx, opts)
		},
	}
	var last atomic.Pointer[corev1.Node]
	lastReport := time.Now()
	start := time.Now()
	// A node that does not exist produces no event: check it once first.
	if n, err := o.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{}); apierrors.IsNotFound(err) && cond(nil) {
		return nil
	} else if err == nil {
		last.Store(n)
	}
	ticker := time.NewTicker(o.reportEvery())
	defer ticker.Stop()
	done := make(chan error, 1)
	go func() {
		_, err := watchtools.UntilWithSync(ctx, lw, &corev1.Node{}, nil, func(ev watch.Event) (bool, error) {
			n, _ := ev.Object.(*corev1.Node)
			if ev.Type == watch.Deleted {
				n = nil
			}
			last.Store(n)
			return cond(n), nil
		})
		done <- err
	}()
	for {
		select {
		case err := <-done:
			if err == nil {
				return nil
			}
			if ctx.Err() != nil {
				return fmt.Errorf("wait for node %s %s: %w after %s (%s)", name, what, ErrTimeout, time.Since(start).Round(time.Second), describeReady(last.Load()))
			}
			return fmt.Errorf("wait for node %s %s: %w", name, what, err)
		case <-ticker.C:
			if time.Since(lastReport) >= o.reportEvery() {
				o.log().Info("waiting for node "+what, "node", name, "status", describeReady(last.Load()), "waited", time.Since(start).Round(time.Second))
				lastReport = time.Now()
			}
		}
	}
}

// WaitReady waits until the node is Ready.
func (o *Ops) WaitReady(ctx context.Context, name string, timeout time.Duration) error {
	return o.WaitNode(ctx, name, "Ready", timeout, func(n *corev1.Node) bool { return n != nil && IsReady(n) })
}

func kv(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		keys[i] = k + "=" + m[k]
	}
	return strings.Join(keys, ",")
}
