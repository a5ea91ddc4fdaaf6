package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/lab"
	"example.com/cookbook/lab/stack"
	"example.com/cookbook/lab/vm"
)

// nextPatch is the lab's Kubernetes version and its next patch, which the lab's apt
// repository offers: "1.37.2", "1.37.3".
func nextPatch(t *testing.T) (string, string) {
	t.Helper()
	cur := strings.TrimPrefix(lab.PinnedVersions().Kubernetes, "v")
	parts := strings.Split(cur, ".")
	p, err := strconv.Atoi(parts[2])
	if err != nil {
		t.Fatal(err)
	}
	return cur, fmt.Sprintf("%s.%s.%d", parts[0], parts[1], p+1)
}

// TestUpgradeK8s: upgrade-k8s-node and upgrade-k8s-cluster in the lab, 1 control node
// and 2 workers, to the next patch: --dry-run writes nothing and says what it would run
// (kubeadm upgrade apply on the control node); bad input is exit 2 with no write; a
// worker is not upgraded past the control plane (the lab's kubeadm upgrade node refuses,
// the run fails and is resumed once the control plane is upgraded); --control-only
// without --yes and without a terminal stops before kubeadm upgrade apply, and resumed
// with --yes it plans, applies once, and waits for the static pods; the workers follow;
// a last run skips every node and runs nothing.
func TestUpgradeK8s(t *testing.T) {
	w, s := stackWorld(t, 2, 0)
	ctx := context.Background()
	cur, dst := nextPatch(t)
	workers := []string{s.Prefix + "-worker-1", s.Prefix + "-worker-2"}
	control := s.Prefix + "-control-1"
	common := []string{"--cluster-name", "toolsbeta", "--dst-version", dst, "--force", "--delete-emptydir-data", "--timeout", "90s"}

	m := markWrites(s)
	r := w.run(append([]string{"--dry-run", "upgrade-k8s-cluster", "--max-unavailable", "2"}, common...)...)
	wantCode(t, r, 0)
	m.none(t, "upgrade-k8s-cluster --dry-run")
	for _, want := range []string{"apt-get install -y kubeadm=" + dst + "-1.1", "kubeadm upgrade apply v" + dst + " -y", "kubeadm upgrade plan v" + dst, "static pods of " + control + " would be waited on"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("dry-run does not say %q:\n%s", want, r.stderr)
		}
	}
	if strings.Index(r.stderr, "kubeadm upgrade apply v"+dst+" -y host=") > strings.Index(r.stderr, "kubeadm upgrade node host=") {
		t.Errorf("dry-run upgrades a worker before the control plane:\n%s", r.stderr)
	}

	m = markWrites(s)
	for _, args := range [][]string{
		{"upgrade-k8s-node", "--cluster-name", "toolsbeta", "--hostname", workers[0], "--dst-version", dst, "--src-version", "1.36.0"},
		{"upgrade-k8s-cluster", "--cluster-name", "toolsbeta", "--dst-version", "1.37"},
		{"upgrade-k8s-cluster", "--cluster-name", "toolsbeta", "--dst-version", dst, "--workers-only", "--control-only"},
		{"upgrade-k8s-cluster", "--cluster-name", "toolsbeta", "--dst-version", dst, "--role", "worker", "--control-only"},
	} {
		wantCode(t, w.run(args...), 2)
	}
	m.none(t, "bad input")

	// The lab refuses a worker upgraded past the control plane, as kubeadm does.
	r = w.run(append([]string{"upgrade-k8s-node", "--hostname", workers[0]}, common...)...)
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, `run "kubeadm upgrade apply v`+dst+`" on a control plane node first`) {
		t.Errorf("a worker upgraded before the control plane is not refused with kubeadm's reason:\n%s", r.stderr)
	}
	if n := nodeOf(t, s, workers[0]); n == nil || n.Status.NodeInfo.KubeletVersion != "v"+cur {
		t.Errorf("%s upgraded past the control plane: %+v", workers[0], n)
	}
	failedWorker := lastRun(w)

	// The control plane: no terminal and no --yes, the apply is not confirmed; resumed
	// with --yes, it is done. --max-unavailable 2: worker-1 stays cordoned by its run.
	r = w.run(append([]string{"upgrade-k8s-cluster", "--control-only", "--max-unavailable", "2"}, common...)...)
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, "kubeadm upgrade apply v"+dst+" on "+control+" not confirmed") || !strings.Contains(r.stderr, "kubeadm upgrade plan: ") {
		t.Errorf("the apply is not stopped for a confirmation after the plan is shown:\n%s", r.stderr)
	}
	if v, _ := s.CP.ClusterVersion(ctx); v != "v"+cur {
		t.Errorf("kubeadm-config at %s before the confirmation", v)
	}
	r = w.run("resume", "--yes", lastRun(w))
	wantCode(t, r, 0)
	if v, _ := s.CP.ClusterVersion(ctx); v != "v"+dst {
		t.Errorf("kubeadm-config says %s after the control plane upgrade, want v%s", v, dst)
	}
	if pods, err := s.CP.StaticPodVersions(ctx, control); err != nil || pods["kube-apiserver"] != "v"+dst || pods["kube-controller-manager"] != "v"+dst || pods["kube-scheduler"] != "v"+dst {
		t.Errorf("static pods of %s: %v %v", control, pods, err)
	}
	cmds := strings.Join(commandsOn(s, control), "\n")
	// The plan is shown before each question (the unconfirmed run, its resume); one apply.
	for want, times := range map[string]int{"kubeadm upgrade plan v" + dst: 2, "kubeadm upgrade apply v" + dst + " -y": 1, "kubeadm upgrade node": 0} {
		if strings.Count(cmds, want) != times {
			t.Errorf("%s ran %q %d times, want %d:\n%s", control, want, strings.Count(cmds, want), times, cmds)
		}
	}
	if n := nodeOf(t, s, control); n == nil || n.Status.NodeInfo.KubeletVersion != "v"+dst || n.Spec.Unschedulable {
		t.Errorf("%s after the upgrade: %+v", control, n)
	}

	wantCode(t, w.run("resume", failedWorker), 0)
	r = w.run(append([]string{"upgrade-k8s-cluster", "--max-unavailable", "2"}, common...)...)
	wantCode(t, r, 0)
	for _, n := range []string{control, workers[0]} {
		if !strings.Contains(r.stderr, "node "+n+" is already at v"+dst) {
			t.Errorf("the cluster run does not skip %s:\n%s", n, r.stderr)
		}
	}
	for _, n := range workers {
		node := nodeOf(t, s, n)
		if node == nil || node.Status.NodeInfo.KubeletVersion != "v"+dst || node.Spec.Unschedulable {
			t.Errorf("%s after the upgrade: %+v", n, node)
		}
		vm := vmOf(t, s, n)
		for _, p := range []string{"kubeadm", "kubelet", "kubectl"} {
			if vm.PackageVersion(p) != dst+"-1.1" || !vm.Held(p) {
				t.Errorf("%s: %s at %s held %v; want %s-1.1 held", n, p, vm.PackageVersion(p), vm.Held(p), dst)
			}
		}
		cmds := strings.Join(commandsOn(s, n), "\n")
		for _, want := range []string{"apt-get install -y kubeadm=" + dst + "-1.1", "kubeadm upgrade node", "apt-get install -y kubelet=" + dst + "-1.1 kubectl=" + dst + "-1.1", "systemctl restart kubelet"} {
			times := 1
			if n == workers[0] && want == "kubeadm upgrade node" {
				times = 2 // refused before the control plane was upgraded, then resumed
			}
			if strings.Count(cmds, want) != times {
				t.Errorf("%s ran %q %d times, want %d:\n%s", n, want, strings.Count(cmds, want), times, cmds)
			}
		}
	}
	audit, _ := os.ReadFile(s.AuditPath)
	for _, n := range append([]string{control}, workers...) {
		if want := "upgraded node " + n + " from Kubernetes v" + cur + " to v" + dst; strings.Count(string(audit), want) != 1 {
			t.Errorf("audit log has %d lines %q, want 1:\n%s", strings.Count(string(audit), want), want, audit)
		}
	}

	m = markWrites(s)
	r = w.run("upgrade-k8s-cluster", "--cluster-name", "toolsbeta", "--dst-version", dst)
	wantCode(t, r, 0)
	r = w.run("upgrade-k8s-node", "--cluster-name", "toolsbeta", "--hostname", workers[0], "--dst-version", dst)
	wantCode(t, r, 0)
	for _, rec := range s.Fleet.History()[m.history:] {
		t.Errorf("a run with nothing to upgrade ran %v on %s", rec.Argv, rec.VM)
	}
}

// lastRun is the id of the newest run.
func lastRun(w *world) string {
	var last *state.Run
	for _, r := range w.runs() {
		if last == nil || r.StartedAt.After(last.StartedAt) {
			last = r
		}
	}
	return last.ID
}

// vmOf is the lab VM of a server name.
func vmOf(t *testing.T, s *stack.Stack, name string) *vm.VM {
	t.Helper()
	for _, srv := range s.Cloud.Servers() {
		if srv.Name == name {
			return s.Fleet.VM(srv.ID)
		}
	}
	t.Fatalf("no server %s", name)
	return nil
}
