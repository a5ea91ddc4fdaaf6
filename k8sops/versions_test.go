package k8sops

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/lab"
)

// TestVersions: ClusterVersion reads kubeadm-config as kubeadm keeps it; StaticPods
// reads the versions of a control node's running mirror pods, and follows an upgrade.
func TestVersions(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	o, _ := newOps(t, "k8sops-test", false)
	if _, err := o.ClusterVersion(ctx); err == nil {
		t.Errorf("ClusterVersion without kubeadm-config: no error")
	}
	if err := cp.SetClusterVersion(ctx, "v1.36.5"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cp.Client.CoreV1().ConfigMaps("kube-system").Delete(context.Background(), "kubeadm-config", metav1.DeleteOptions{})
	})
	if v, err := o.ClusterVersion(ctx); err != nil || v != "v1.36.5" {
		t.Errorf("ClusterVersion = %q, %v; want v1.36.5", v, err)
	}
	const node = "k8sops-versions-control-1"
	if err := cp.AddNode(ctx, lab.NodeSpec{Name: node}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cp.RemoveNode(context.Background(), node)
		for _, c := range ControlPlaneComponents {
			_ = cp.Client.CoreV1().Pods("kube-system").Delete(context.Background(), c+"-"+node, metav1.DeleteOptions{})
		}
	})
	for _, ver := range []string{"v1.36.5", "v1.37.1"} {
		if err := cp.SetStaticPods(ctx, node, ver); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"kube-apiserver": ver, "kube-controller-manager": ver, "kube-scheduler": ver}
		var got map[string]string
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			var err error
			if got, err = o.StaticPods(ctx, node); err != nil {
				t.Fatal(err)
			}
			if cmp.Equal(want, got) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("StaticPods at %s (-want +got):\n%s", ver, diff)
		}
	}
}
