package main

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"example.com/cookbook/lab"
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

// TestUpgradeK8sWorkers: upgrade-k8s-cluster to the next patch upgrades every worker
// (packages installed and held, the Node reports the new kubelet), the control node is
// left alone; a second run skips every node; --dry-run writes nothing; a control node,
// a version the node is not at and a bad version are bad input (exit 2).
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

	r = w.run("upgrade-k8s-cluster", "--cluster-name", "toolsbeta", "--dst-version", dst, "--max-unavailable", "2", "--force", "--delete-emptydir-data", "--timeout", "90s")
	wantCode(t, r, 0)
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
			if strings.Count(cmds, want) != 1 {
				t.Errorf("%s ran %q %d times, want once:\n%s", n, want, strings.Count(cmds, want), cmds)
			}
		}
	}
	if n := nodeOf(t, s, control); n == nil || n.Status.NodeInfo.KubeletVersion != "v"+cur {
		t.Errorf("control node touched: %+v", n)
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
