package cookbooks

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
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
	"example.com/cookbook/hooks"
	"example.com/cookbook/k8sops"
)

// TestRollingSiteSteps checks where the rolling skeleton puts silences and hooks: none
// without configuration; with an alertmanager and beforeDrain hooks, the hooks and the
// silence before the drain and the unsilence after the health gate; a role without
// hooks has no hook step.
func TestRollingSiteSteps(t *testing.T) {
	var objs []runtime.Object
	for _, n := range []string{"n-1", "w-1", "w-2"} {
		objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}})
	}
	kube := &k8sops.Ops{Client: fake.NewSimpleClientset(objs...), Log: slog.New(slog.DiscardHandler)}
	env := &Env{Log: kube.Log}
	hook := config.Hook{Command: []string{"true", "{hostname}"}}
	noop := func(c *clients, s pipeline.Scope, n rollNode) []pipeline.Step {
		return pipeline.One(pipeline.Step{Name: "poke", Desc: pipeline.Text("poke"), Do: func(context.Context, *pipeline.Values) error { return nil }})
	}
	// plan returns the steps of batch n (batches are per role: n-1, then w-1 and w-2).
	plan := func(t *testing.T, cl *config.Cluster, batch int) []string {
		t.Helper()
		sil, err := env.Silencer(cl)
		if err != nil {
			t.Fatal(err)
		}
		c := &clients{env: env, cl: cl, kube: kube, silencer: sil, hooks: &hooks.Runner{}}
		r := &rolling{Env: env, Cluster: cl, Job: "roll-toy", Did: "poked", Max: 2, Timeout: time.Second,
			Select: func(names []string) ([]string, error) { return names, nil }, Action: noop,
			Clients: func(context.Context) (*clients, error) { return c, nil }}
		runner := &pipeline.Runner{Store: &state.Store{Dir: t.TempDir()}}
		steps, err := r.Plan(context.Background(), runner.Values(&state.Run{ID: "r-1", Cookbook: "roll-toy", StartedAt: time.Now()}))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range steps {
			if rest, ok := strings.CutPrefix(s.Name, fmt.Sprintf("batch-%d/", batch)); ok {
				names = append(names, rest)
			}
		}
		return names
	}
	roles := func() map[string]*config.Role {
		return map[string]*config.Role{"worker": {Prefix: "w"}, "nfs": {Prefix: "n"}}
	}

	bare := &config.Cluster{Name: "toy", Roles: roles()}
	want := []string{"record-cordon-state", "cordon", "drain", "poke", "wait-ready", "uncordon", "health-gate", "settle"}
	if diff := cmp.Diff(want, plan(t, bare, 2)); diff != "" {
		t.Errorf("without alertmanager and hooks (-want +got):\n%s", diff)
	}

	site := &config.Cluster{Name: "toy", Roles: roles(), Alertmanager: &config.Alertmanager{URL: "http://127.0.0.1:1"}}
	site.Roles["worker"].Hooks = config.Hooks{BeforeDrain: []config.Hook{hook, hook}}
	want = []string{"record-cordon-state", "cordon", "hook-before-drain-1", "hook-before-drain-2", "silence", "drain", "poke",
		"wait-ready", "uncordon", "health-gate", "unsilence", "settle"}
	if diff := cmp.Diff(want, plan(t, site, 2)); diff != "" {
		t.Errorf("workers, with alertmanager and the role's two beforeDrain hooks (-want +got):\n%s", diff)
	}
	want = []string{"record-cordon-state", "cordon", "silence", "drain", "poke", "wait-ready", "uncordon", "health-gate", "unsilence", "settle"}
	if diff := cmp.Diff(want, plan(t, site, 1)); diff != "" {
		t.Errorf("nfs, with alertmanager and no hooks (-want +got):\n%s", diff)
	}
}
