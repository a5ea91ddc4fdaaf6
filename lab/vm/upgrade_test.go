package vm

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/lab"
)

// TestKubeadmUpgradeVersions: the lab's kubeadm upgrade plan|apply|node, kubelet restart
// and apt act on the control plane's version as kubeadm records it (kubeadm-config, the
// static pods), refusing what kubeadm, the kubelet and apt refuse.
func TestKubeadmUpgradeVersions(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	if err := cp.SetClusterVersion(ctx, "v1.37.2"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cp.Client.CoreV1().ConfigMaps("kube-system").Delete(context.Background(), "kubeadm-config", metav1.DeleteOptions{})
	})
	op := newOperator(t)
	f := newFleet(t, op)
	f.KubeVersion = "1.37.2"
	f.Cluster = &KubeCluster{CP: cp}
	ctl := boot(t, f, "tb-vmtest-kctl-1", map[string]string{"cookbook-role": "control"})
	wrk := boot(t, f, "tb-vmtest-kwrk-1", nil)
	for _, v := range []*VM{ctl, wrk} {
		if err := cp.AddNode(ctx, lab.NodeSpec{Name: v.Name, KubeletVersion: "v1.37.2", BootID: v.BootID()}); err != nil {
			t.Fatal(err)
		}
		v.MarkJoined()
		t.Cleanup(func() { _ = cp.RemoveNode(context.Background(), v.Name) })
	}
	if err := cp.SetStaticPods(ctx, ctl.Name, "v1.37.2"); err != nil {
		t.Fatal(err)
	}
	on := map[string]*VM{"ctl": ctl, "wrk": wrk}
	steps := []struct {
		vm, line string
		wantOut  string
		wantErr  string
		wantCode int
	}{
		{"wrk", "kubeadm upgrade plan v1.38.0", "", "/etc/kubernetes/admin.conf: no such file", 1},
		{"ctl", "kubeadm upgrade plan v1.38.0", "Cluster version: v1.37.2", `Specified version to upgrade to "v1.38.0" is higher than the kubeadm version "v1.37.2". Upgrade kubeadm first`, 1},
		// kubeadm upgrade node accepts a kubeadm a patch newer than the cluster.
		{"wrk", "apt-get install -y kubeadm=1.37.3-1.1", "Setting up kubeadm (1.37.3-1.1)", "", 0},
		{"wrk", "kubeadm upgrade node", "Not a control plane node", "", 0},
		{"ctl", "apt-get install -y kubeadm=1.38.0-1.1", "Setting up kubeadm (1.38.0-1.1)", "", 0},
		{"ctl", "kubeadm version -o short", "v1.38.0", "", 0},
		{"ctl", "kubeadm upgrade apply v1.37.1 -y", "", `is lower than the cluster version "v1.37.2". Downgrades are not supported yet`, 1},
		{"ctl", "kubeadm upgrade apply v1.37.3 -y", "", "Kubeadm version v1.38.0 can only be used to upgrade to Kubernetes version 1.38", 1},
		{"ctl", "kubeadm upgrade apply v1.38 -y", "", `unable to parse version "v1.38"`, 1},
		{"ctl", "kubeadm upgrade apply v1.38.0 -y --force", "", "unknown flag: --force", 1},
		{"ctl", "kubeadm upgrade apply v1.38.0", "Are you sure you want to proceed", "won't proceed", 1},
		// ... and a minor newer: the node is "upgraded" to the cluster's version.
		{"ctl", "kubeadm upgrade node", `control plane instance to version "v1.37.2"`, "", 0},
		{"wrk", "apt-get install -y kubeadm=1.38.0-1.1 kubelet=1.38.0-1.1", "Setting up kubelet (1.38.0-1.1)", "", 0},
		// No KubeletVersion check in upgrade node's preflight: the kubelet refuses to start.
		{"wrk", "kubeadm upgrade node", "Not a control plane node", "", 0},
		{"wrk", "systemctl restart kubelet", "", "kubelet: the kubelet version is higher than the control plane version", 1},
		{"wrk", "apt-get install -y kubelet=1.37.2-1.1", "", "E: Packages were downgraded and -y was used without --allow-downgrades.", 100},
		{"wrk", "apt-get install -y --allow-downgrades kubelet=1.37.2-1.1", "Setting up kubelet (1.37.2-1.1)", "", 0},
		{"ctl", "kubeadm upgrade plan v1.38.0", "kubeadm upgrade apply v1.38.0", "", 0},
		{"ctl", "kubeadm upgrade apply v1.38.0 -y", `SUCCESS! Your cluster was upgraded to "v1.38.0"`, "", 0},
		{"ctl", "kubeadm upgrade apply v1.38.0 -y", `SUCCESS!`, "", 0},
		{"wrk", "kubeadm upgrade node", "Not a control plane node", "", 0},
		{"wrk", "apt-get install -y kubeadm=1.37.3-1.1", "", "--allow-downgrades", 100},
	}
	for _, s := range steps {
		cl, err := dial(t, f, on[s.vm], op)
		if err != nil {
			t.Fatal(err)
		}
		out, errs, code := run(t, cl, s.line)
		cl.Close()
		if code != s.wantCode || !strings.Contains(out, s.wantOut) || !strings.Contains(errs, s.wantErr) {
			t.Errorf("%s: %s: exit %d, stdout %q, stderr %q; want exit %d, stdout ~%q, stderr ~%q", s.vm, s.line, code, out, errs, s.wantCode, s.wantOut, s.wantErr)
		}
		if s.line == "systemctl restart kubelet" {
			n, err := cp.Client.CoreV1().Nodes().Get(ctx, wrk.Name, metav1.GetOptions{})
			if err != nil || lab.IsReady(n) || n.Status.NodeInfo.KubeletVersion != "v1.37.2" {
				t.Errorf("a kubelet newer than the control plane registered: %v %+v", err, n.Status)
			}
		}
	}
	if got, _ := cp.ClusterVersion(ctx); got != "v1.38.0" {
		t.Errorf("kubeadm-config says %s after the apply, want v1.38.0", got)
	}
	pods, err := cp.StaticPodVersions(ctx, ctl.Name)
	if err != nil || len(pods) != 3 || pods["kube-apiserver"] != "v1.38.0" || pods["kube-scheduler"] != "v1.38.0" {
		t.Errorf("static pods of %s after the apply: %v %v", ctl.Name, pods, err)
	}

	// A cluster two minors behind the target: kubeadm refuses to skip a minor.
	if err := cp.SetClusterVersion(ctx, "v1.36.5"); err != nil {
		t.Fatal(err)
	}
	cl, err := dial(t, f, ctl, op)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	_, errs, code := run(t, cl, "kubeadm upgrade apply v1.38.0 -y")
	if code != 1 || !strings.Contains(errs, `Specified version to upgrade to "v1.38.0" is too high; kubeadm can upgrade only 1 minor version at a time`) {
		t.Errorf("skipping a minor: exit %d, stderr %q", code, errs)
	}
	if got, _ := cp.ClusterVersion(ctx); got != "v1.36.5" {
		t.Errorf("a refused apply changed kubeadm-config to %s", got)
	}
	// kubeadm upgrade node refuses a cluster older than the minor before its own.
	_, errs, code = run(t, cl, "kubeadm upgrade node")
	if code != 1 || !strings.Contains(errs, "this version of kubeadm only supports deploying clusters with the control plane version >= 1.37.0. Current version: v1.36.5") {
		t.Errorf("upgrade node of a cluster two minors older than kubeadm: exit %d, stderr %q", code, errs)
	}
	if pods, _ := cp.StaticPodVersions(ctx, ctl.Name); pods["kube-apiserver"] != "v1.38.0" {
		t.Errorf("a refused upgrade node changed the static pods: %v", pods)
	}
	// The worker's kubelet at the control plane's version restarts and registers.
	if err := cp.SetClusterVersion(ctx, "v1.38.0"); err != nil {
		t.Fatal(err)
	}
	wl, err := dial(t, f, wrk, op)
	if err != nil {
		t.Fatal(err)
	}
	defer wl.Close()
	if _, errs, code := run(t, wl, "apt-get install -y kubelet=1.38.0-1.1"); code != 0 {
		t.Fatalf("install kubelet: %d %s", code, errs)
	}
	if _, errs, code := run(t, wl, "systemctl restart kubelet"); code != 0 {
		t.Fatalf("restart kubelet: %d %s", code, errs)
	}
	if err := cp.WaitNodeReady(ctx, wrk.Name, true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	// A kubeadm older than the cluster (down to the minor before it) is accepted too.
	if _, errs, code := run(t, wl, "apt-get install -y --allow-downgrades kubeadm=1.37.2-1.1"); code != 0 {
		t.Fatalf("downgrade kubeadm: %d %s", code, errs)
	}
	if out, errs, code := run(t, wl, "kubeadm upgrade node"); code != 0 || !strings.Contains(out, "successfully completed") {
		t.Errorf("upgrade node with kubeadm v1.37.2 in a v1.38.0 cluster: exit %d, %q %q", code, out, errs)
	}
}

// TestKubeadmUpgradeHealth: kubeadm upgrade plan and apply run kubeadm's cluster health
// checks first: a NotReady control-plane Node fails both (exit 1, kubeadm's message
// naming it) and nothing is upgraded.
func TestKubeadmUpgradeHealth(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	if err := cp.SetClusterVersion(ctx, "v1.37.2"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cp.Client.CoreV1().ConfigMaps("kube-system").Delete(context.Background(), "kubeadm-config", metav1.DeleteOptions{})
	})
	op := newOperator(t)
	f := newFleet(t, op)
	f.KubeVersion = "1.37.2"
	f.Cluster = &KubeCluster{CP: cp}
	ctl := boot(t, f, "tb-vmtest-hctl-1", map[string]string{"cookbook-role": "control"})
	control := map[string]string{"node-role.kubernetes.io/control-plane": ""}
	for _, n := range []string{ctl.Name, "tb-vmtest-hctl-2", "tb-vmtest-hctl-3"} {
		if err := cp.AddNode(ctx, lab.NodeSpec{Name: n, KubeletVersion: "v1.37.2", Labels: control}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cp.RemoveNode(context.Background(), n) })
	}
	ctl.MarkJoined()
	if err := cp.SetStaticPods(ctx, ctl.Name, "v1.37.2"); err != nil {
		t.Fatal(err)
	}
	cl := redial(t, f, ctl, op)
	if _, errs, code := run(t, cl, "apt-get install -y kubeadm=1.37.3-1.1"); code != 0 {
		t.Fatalf("install kubeadm: %d %s", code, errs)
	}
	for _, n := range []string{"tb-vmtest-hctl-2", "tb-vmtest-hctl-3"} {
		if err := cp.SetNodeNotReady(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	want := "[ERROR ControlPlaneNodesReady]: there are NotReady control-planes in the cluster: [tb-vmtest-hctl-2 tb-vmtest-hctl-3]"
	for _, line := range []string{"kubeadm upgrade plan", "kubeadm upgrade apply v1.37.3 -y"} {
		out, errs, code := run(t, cl, line)
		if code != 1 || !strings.Contains(out, "[upgrade] Running cluster health checks") || !strings.Contains(errs, want) ||
			!strings.Contains(errs, "[upgrade/health] FATAL: preflight checks failed") || strings.Contains(out, "[upgrade/versions]") {
			t.Errorf("%s with two control planes NotReady: exit %d, %q, %q; want exit 1 and %q", line, code, out, errs, want)
		}
	}
	if got, _ := cp.ClusterVersion(ctx); got != "v1.37.2" {
		t.Errorf("a refused apply changed kubeadm-config to %s", got)
	}
	// Ready again: the apply goes through.
	for _, n := range []string{"tb-vmtest-hctl-2", "tb-vmtest-hctl-3"} {
		if err := cp.SetNodeReady(ctx, n, lab.NewBootID()); err != nil {
			t.Fatal(err)
		}
	}
	if out, errs, code := run(t, cl, "kubeadm upgrade apply v1.37.3 -y"); code != 0 || !strings.Contains(out, `SUCCESS! Your cluster was upgraded to "v1.37.3"`) {
		t.Errorf("apply with every control plane Ready: exit %d, %q, %q", code, out, errs)
	}
}
