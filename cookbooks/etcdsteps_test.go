package cookbooks

import (
	"context"
	"log/slog"
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

// TestControlNodesFoundByLabel: without controlNodes in the configuration the control
// nodes are the labelled Nodes (one added by an earlier run included); the configuration's
// list, when given, is used instead.
func TestControlNodesFoundByLabel(t *testing.T) {
	t.Setenv("KUBE_FEATURE_WatchListClient", "false")
	node := func(name string, control bool) runtime.Object {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}}}
		if control {
			n.Labels[k8sops.ControlPlaneLabel] = ""
		}
		return n
	}
	env := &Env{Log: slog.New(slog.DiscardHandler)}
	for _, c := range []struct {
		name     string
		nodes    []runtime.Object
		override []string
		want     []string
		err      string
	}{
		{"by label, the added one too", []runtime.Object{node("c-1", true), node("w-1", false), node("c-4", true)}, nil, []string{"c-1", "c-4"}, ""},
		{"the configuration's list overrides", []runtime.Object{node("c-1", true), node("c-4", true)}, []string{"c-1"}, []string{"c-1"}, ""},
		{"none labelled, none configured", []runtime.Object{node("w-1", false)}, nil, nil, "no node is labelled node-role.kubernetes.io/control-plane and clusters.toy.controlNodes is empty"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl := &config.Cluster{Name: "toy", ControlNodes: c.override}
			cs := &clients{env: env, cl: cl, kube: &k8sops.Ops{Client: fake.NewSimpleClientset(c.nodes...), Log: env.Log}}
			got, err := cs.controlNodes(context.Background())
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
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
		})
	}
}
