package main

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

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

// TestUpgradeK8sWorkers: a worker is not upgraded past the control plane (the lab's
// kubeadm upgrade node refuses; the failed run is resumed once the control plane is
// upgraded by hand); upgrade-k8s-cluster to the next patch upgrades every worker
// (packages installed and held, the Node reports the new kubelet), the control node's
// kubelet is left alone; a second run skips every node; --dry-run writes nothing; a
// control node, a version the node is not at and a bad version are bad input (exit 2).
func TestUpgradeK8sWorkers(t *testing.T) {
	w, s := stackWorld(t, 2, 0)
	cur, dst := nextPatch(t)
	workers := []string{s.Prefix + "-worker-1", s.Prefix + "-worker-2"}
	control := s.Prefix + "-control-1"

	m := markWrites(s)
	r := w.run("--dry-run", "upgrade-k8s-cluster", "--cluster-name", "toolsbeta", "--dst-version", dst, "--force", "--delete-emptydir-data")
	wantCode(t, r, 0)
	m.none(t, "upgrade-k8s-cluster --dry-run")
	if !strings.Contains(r.stderr, "DRY-RUN: would run on") || !strings.Contains(r.stderr, "apt-get install -y kubeadm="+dst+"-1.1") {
		t.Errorf("dry-run does not say what it would install:\n%s", r.stderr)
	}

	m = markWrites(s)
	for _, args := range [][]string{
		{"upgrade-k8s-node", "--cluster-name", "toolsbeta", "--hostname", control, "--dst-version", dst},
		{"upgrade-k8s-cluster", "--cluster-name", "toolsbeta", "--role", "control", "--dst-version", dst},
		{"upgrade-k8s-node", "--cluster-name", "toolsbeta", "--hostname", workers[0], "--dst-version", dst, "--src-version", "1.36.0"},
		{"upgrade-k8s-cluster", "--cluster-name", "toolsbeta", "--dst-version", "1.37"},
	} {
		r := w.run(args...)
		wantCode(t, r, 2)
		if args[0] == "upgrade-k8s-node" && args[4] == control && !strings.Contains(r.stderr, "issue 14") {
			t.Errorf("control node refused without naming issue 14:\n%s", r.stderr)
		}
	}
	m.none(t, "bad input")

	// The lab refuses a worker upgraded past the control plane, as kubeadm does; once
	// the control plane is upgraded (here by hand), the failed run is resumed.
	r = w.run("upgrade-k8s-node", "--cluster-name", "toolsbeta", "--hostname", workers[0], "--dst-version", dst, "--force", "--delete-emptydir-data", "--timeout", "90s")
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, `run "kubeadm upgrade apply v`+dst+`" on a control plane node first`) {
		t.Errorf("a worker upgraded before the control plane is not refused with kubeadm's reason:\n%s", r.stderr)
	}
	if n := nodeOf(t, s, workers[0]); n == nil || n.Status.NodeInfo.KubeletVersion != "v"+cur {
		t.Errorf("%s upgraded past the control plane: %+v", workers[0], n)
	}
	runs := w.runs()
	failed := runs[len(runs)-1].ID
	ctl := vmOf(t, s, control)
	for _, line := range []string{"apt-get install -y kubeadm=" + dst + "-1.1", "kubeadm upgrade apply v" + dst + " -y"} {
		if out, errs, code := ctl.Exec(line); code != 0 {
			t.Fatalf("%s on %s: exit %d\n%s%s", line, control, code, out, errs)
		}
	}
	wantCode(t, w.run("resume", failed), 0)

	r = w.run("upgrade-k8s-cluster", "--cluster-name", "toolsbeta", "--dst-version", dst, "--max-unavailable", "2", "--force", "--delete-emptydir-data", "--timeout", "90s")
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "node "+workers[0]+" is already at v"+dst) {
		t.Errorf("the cluster run does not skip the resumed %s:\n%s", workers[0], r.stderr)
	}
	for _, n := range workers {
		node := nodeOf(t, s, n)
		if node == nil || node.Status.NodeInfo.KubeletVersion != "v"+dst || node.Spec.Unschedulable {
			t.Errorf("%s after the upgrade: %+v", n, node)
		}
		var vm interface {
			PackageVersion(string) string
			Held(string) bool
		}
		for _, srv := range s.Cloud.Servers() {
			if srv.Name == n {
				vm = s.Fleet.VM(srv.ID)
			}
		}
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
	if n := nodeOf(t, s, control); n == nil || n.Status.NodeInfo.KubeletVersion != "v"+cur {
		t.Errorf("control node's kubelet touched: %+v", n)
	}

	m = markWrites(s)
	r = w.run("upgrade-k8s-cluster", "--cluster-name", "toolsbeta", "--dst-version", dst)
	wantCode(t, r, 0)
	for _, n := range workers {
		if !strings.Contains(r.stderr, "node "+n+" is already at v"+dst) {
			t.Errorf("second run does not say %s is skipped:\n%s", n, r.stderr)
		}
	}
	r = w.run("upgrade-k8s-node", "--cluster-name", "toolsbeta", "--hostname", workers[0], "--dst-version", dst)
	wantCode(t, r, 0)
	for _, rec := range s.Fleet.History()[m.history:] {
		t.Errorf("a run with nothing to upgrade ran %v on %s", rec.Argv, rec.VM)
	}
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
