package cookbooks

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/etcdctl"
	"example.com/cookbook/k8sops"
)

// TestRollingWithToyAction plans a roll whose action is a toy step set (no lab: the
// Kubernetes API is client-go's fake), checks the plan (step names, batches, control
// nodes last and alone), runs it with the toy failing on one node, and resumes it: the
// failure names the node, and the resume redoes only that node's action.
func TestRollingWithToyAction(t *testing.T) {
	// client-go's fake sends no watch-list bookmark: watch the old way.
	t.Setenv("KUBE_FEATURE_WatchListClient", "false")
	var objs []runtime.Object
	for _, n := range []string{"c-1", "w-1", "w-2", "w-3"} {
		objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}})
	}
	client := fake.NewSimpleClientset(objs...)
	cl := &config.Cluster{Name: "toy", Roles: map[string]*config.Role{"worker": {Prefix: "w"}, "control": {Prefix: "c", ControlPlane: true}}}
	env := &Env{Log: slog.New(slog.DiscardHandler)}
	kube := &k8sops.Ops{Client: client, Log: env.Log}

	var etcdReads atomic.Int32
	var mu sync.Mutex
	poked := map[string]int{}
	broken := map[string]bool{"w-2": true}
	toy := func(c *clients, s pipeline.Scope, n rollNode) []pipeline.Step {
		return []pipeline.Step{{Name: "poke", Desc: pipeline.Textf("poke %s", n.Name), Do: func(ctx context.Context, v *pipeline.Values) error {
			mu.Lock()
			defer mu.Unlock()
			poked[n.Name]++
			if broken[n.Name] {
				return errors.New("the toy broke")
			}
			return pipeline.In(s, pipeline.Key[string]("poked")).Set(v, n.Name)
		}}}
	}
	roll := func() *rolling {
		return &rolling{Env: env, Cluster: cl, Job: "roll-toy", Did: "poked", Max: 2, Timeout: 10 * time.Second,
			Select: func(names []string) ([]string, error) { return names, nil },
			Action: toy, Gate: k8sops.GateOptions{Window: time.Millisecond},
			Clients: func(context.Context) (*clients, error) {
				return &clients{env: env, cl: cl, kube: kube, readEtcd: func(context.Context, ...string) (etcdctl.Status, string, error) {
					etcdReads.Add(1)
					var st etcdctl.Status // c-1 and two control nodes not in the toy's selection
					for i, n := range []string{"c-1", "x-2", "x-3"} {
						st.Members = append(st.Members, etcdctl.Member{ID: uint64(i + 1), Name: n, ClientURLs: []string{"https://" + n + ":2379"}})
						st.Health = append(st.Health, etcdctl.Health{Endpoint: "https://" + n + ":2379", Health: true})
					}
					return st, "x-2", nil
				}}, nil
			}}
	}

	store := &state.Store{Dir: t.TempDir()}
	run := &state.Run{ID: "r-toy", Cookbook: "roll-toy", StartedAt: time.Now()}
	runner := &pipeline.Runner{Store: store}
	ctx := context.Background()
	first := roll()
	defer first.Close()
	steps, err := first.Plan(ctx, runner.Values(run))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range steps {
		names = append(names, s.Name)
	}
	batch := func(n int) []string {
		var out []string
		for _, s := range []string{"record-cordon-state", "cordon", "drain", "poke", "wait-ready", "uncordon", "health-gate", "settle"} {
			out = append(out, "batch-"+string(rune('0'+n))+"/"+s)
		}
		return out
	}
	// The control node's batch checks etcd before and after.
	b3 := append(append([]string{"batch-3/check-etcd"}, batch(3)[:6]...), append([]string{"batch-3/check-etcd-after"}, batch(3)[6:]...)...)
	want := append(append(append(append([]string{"audit-start"}, batch(1)...), batch(2)...), b3...), "audit")
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("step names (-want +got):\n%s", diff)
	}
	plan, err := keyRollPlan.Must(runner.Values(run))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([][]string{{"w-1", "w-2"}, {"w-3"}, {"c-1"}}, namesOf(plan)); diff != "" {
		t.Errorf("batches (-want +got):\n%s", diff)
	}

	err = runner.Run(ctx, run, steps)
	var se *pipeline.StepError
	if !errors.As(err, &se) || se.Step != "batch-1/poke" || !strings.Contains(err.Error(), "node w-2: the toy broke") || strings.Contains(err.Error(), "w-1") {
		t.Fatalf("err = %v, want batch-1/poke failing on node w-2 only", err)
	}

	// Resume with a new process's plan: the recorded plan is replayed.
	broken["w-2"] = false
	runner = &pipeline.Runner{Store: store}
	second := roll()
	defer second.Close()
	if steps, err = second.Plan(ctx, runner.Values(run)); err != nil {
		t.Fatal(err)
	}
	if err := runner.Run(ctx, run, steps); err != nil {
		t.Fatal(err)
	}
	// etcd read for the plan's quorum check, before and after c-1's reboot.
	if n := etcdReads.Load(); n != 3 {
		t.Errorf("etcd read %d times, want 3", n)
	}
	if diff := cmp.Diff(map[string]int{"w-1": 1, "w-2": 2, "w-3": 1, "c-1": 1}, poked); diff != "" {
		t.Errorf("toy actions per node (-want +got):\n%s", diff)
	}
	for _, n := range []string{"c-1", "w-1", "w-2", "w-3"} {
		node, err := kube.Node(ctx, n)
		if err != nil || node.Spec.Unschedulable {
			t.Errorf("node %s left cordoned (%v)", n, err)
		}
		if got, _ := pipeline.Key[string](n + "/poked").Get(runner.Values(run)); got != n {
			t.Errorf("%s/poked = %q: the action's values are not in the node's scope", n, got)
		}
	}
}

func namesOf(bs [][]rollNode) [][]string { return names(bs) }

// promptFunc answers a failed step with what its function says.
type promptFunc func(step string, err error) pipeline.Choice

func (f promptFunc) AfterFailure(_ context.Context, step string, err error) pipeline.Choice {
	return f(step, err)
}

// TestRollingRoomRecheckedOnRetry: a batch refused because another node was cordoned
// after the plan is checked again when the operator fixes the cluster and answers
// [r]etry, and then goes on (the refusal is not remembered for the whole process).
func TestRollingRoomRecheckedOnRetry(t *testing.T) {
	t.Setenv("KUBE_FEATURE_WatchListClient", "false")
	var objs []runtime.Object
	for _, n := range []string{"w-1", "w-2", "w-9"} {
		objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}})
	}
	client := fake.NewSimpleClientset(objs...)
	cl := &config.Cluster{Name: "toy", Roles: map[string]*config.Role{"worker": {Prefix: "w"}}}
	env := &Env{Log: slog.New(slog.DiscardHandler)}
	kube := &k8sops.Ops{Client: client, Log: env.Log}
	var mu sync.Mutex
	poked := map[string]int{}
	toy := func(c *clients, s pipeline.Scope, n rollNode) []pipeline.Step {
		return []pipeline.Step{{Name: "poke", Desc: pipeline.Textf("poke %s", n.Name), Do: func(ctx context.Context, v *pipeline.Values) error {
			mu.Lock()
			defer mu.Unlock()
			poked[n.Name]++
			return nil
		}}}
	}
	roll := &rolling{Env: env, Cluster: cl, Job: "roll-toy", Did: "poked", Max: 1, Timeout: 10 * time.Second,
		Select: func([]string) ([]string, error) { return []string{"w-1", "w-2"}, nil },
		Action: toy, Gate: k8sops.GateOptions{Window: time.Millisecond},
		Clients: func(context.Context) (*clients, error) { return &clients{env: env, cl: cl, kube: kube}, nil }}
	defer roll.Close()
	store := &state.Store{Dir: t.TempDir()}
	run := &state.Run{ID: "r-room", Cookbook: "roll-toy", StartedAt: time.Now()}
	ctx := context.Background()
	var prompts []string
	runner := &pipeline.Runner{Store: store, Prompt: promptFunc(func(step string, err error) pipeline.Choice {
		prompts = append(prompts, step+": "+err.Error())
		if len(prompts) > 1 {
			return pipeline.Abort
		}
		// The operator uncordons the node that took the room, and retries.
		if err := kube.Uncordon(ctx, "w-9"); err != nil {
			t.Error(err)
		}
		return pipeline.Retry
	})}
	steps, err := roll.Plan(ctx, runner.Values(run))
	if err != nil {
		t.Fatal(err)
	}
	// After the plan, someone cordons w-9: batch 1 has no room.
	if _, err := kube.Cordon(ctx, "w-9"); err != nil {
		t.Fatal(err)
	}
	if err := runner.Run(ctx, run, steps); err != nil {
		t.Fatalf("run: %v (prompts: %q)", err, prompts)
	}
	want := "batch-1/cordon: step batch-1/cordon: node w-1: taking down w-1 would make 2 nodes unschedulable (w-1, w-9), more than --max-unavailable 1"
	if len(prompts) != 1 || prompts[0] != want {
		t.Errorf("prompts = %q, want one: %q", prompts, want)
	}
	if diff := cmp.Diff(map[string]int{"w-1": 1, "w-2": 1}, poked); diff != "" {
		t.Errorf("toy actions per node (-want +got):\n%s", diff)
	}
}
