package cookbooks

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"example.com/cookbook/config"
	"example.com/cookbook/k8sops"
)

// TestControlNodesFoundByLabel: the control nodes are the labelled Nodes (one added by an
// earlier run included); the configuration's list, when given, overrides them, checked
// against the cluster: a configured node that is no Node (replaced since) is skipped with
// one warning however often it is asked, and with none left the labelled nodes are used.
func TestControlNodesFoundByLabel(t *testing.T) {
	t.Setenv("KUBE_FEATURE_WatchListClient", "false")
	node := func(name string, control bool) runtime.Object {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}}}
		if control {
			n.Labels[k8sops.ControlPlaneLabel] = ""
		}
		return n
	}
	replaced := []runtime.Object{node("c-4", true), node("c-5", true), node("c-6", true), node("w-1", false)}
	for _, c := range []struct {
		name     string
		nodes    []runtime.Object
		override []string
		want     []string
		warnings []string
		err      string
	}{
		{name: "by label, the added one too", nodes: []runtime.Object{node("c-1", true), node("w-1", false), node("c-4", true)}, want: []string{"c-1", "c-4"}},
		{name: "the configuration's list overrides", nodes: []runtime.Object{node("c-1", true), node("c-4", true)}, override: []string{"c-4"}, want: []string{"c-4"}},
		{name: "a configured node without the label is used", nodes: []runtime.Object{node("c-1", false), node("c-4", true)}, override: []string{"c-1"}, want: []string{"c-1"}},
		{name: "a replaced configured node is skipped", nodes: replaced, override: []string{"c-1", "c-5"}, want: []string{"c-5"},
			warnings: []string{"clusters.toy.controlNodes: c-1 is no node of the cluster (replaced since the configuration was written?): skipped"}},
		{name: "every configured node replaced: the labelled ones", nodes: replaced, override: []string{"c-1", "c-2", "c-3"}, want: []string{"c-4", "c-5", "c-6"},
			warnings: []string{
				"clusters.toy.controlNodes: c-1 is no node of the cluster (replaced since the configuration was written?): skipped",
				"clusters.toy.controlNodes: c-2 is no node of the cluster (replaced since the configuration was written?): skipped",
				"clusters.toy.controlNodes: c-3 is no node of the cluster (replaced since the configuration was written?): skipped",
				"no node of clusters.toy.controlNodes is in the cluster: using the nodes labelled node-role.kubernetes.io/control-plane (c-4, c-5, c-6)",
			}},
		{name: "none labelled, none configured", nodes: []runtime.Object{node("w-1", false)}, err: "cluster toy has no control node: no node is labelled node-role.kubernetes.io/control-plane and clusters.toy.controlNodes is empty"},
		{name: "none labelled, the configured ones gone", nodes: []runtime.Object{node("w-1", false)}, override: []string{"c-1"},
			err: "cluster toy has no control node: no node is labelled node-role.kubernetes.io/control-plane and clusters.toy.controlNodes names no node of the cluster"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var logs strings.Builder
			env := &Env{Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
				if a.Key == slog.TimeKey {
					return slog.Attr{}
				}
				return a
			}}))}
			cl := &config.Cluster{Name: "toy", ControlNodes: c.override}
			cs := &clients{env: env, cl: cl, kube: &k8sops.Ops{Client: fake.NewSimpleClientset(c.nodes...), Log: env.Log}}
			// Asked twice, as a run's etcd checks ask: the same nodes, each warning once.
			for range 2 {
				got, err := cs.controlNodes(context.Background())
				if c.err != "" {
					if err == nil || err.Error() != c.err {
						t.Fatalf("err = %v, want %q", err, c.err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(c.want, got); diff != "" {
					t.Errorf("control nodes (-want +got):\n%s", diff)
				}
			}
			var warnings []string
			for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				if m, ok := strings.CutPrefix(l, "level=WARN msg="); ok {
					uq, err := strconv.Unquote(m)
					if err != nil {
						uq = m
					}
					warnings = append(warnings, uq)
				}
			}
			if diff := cmp.Diff(c.warnings, warnings); diff != "" {
				t.Errorf("warnings (-want +got):\n%s\nlog:\n%s", diff, logs.String())
			}
		})
	}
}
