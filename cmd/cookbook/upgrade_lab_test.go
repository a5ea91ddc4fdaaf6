package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/lab"
	"example.com/cookbook/silences"
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

// TestUpgradeSilenceCluster: upgrade-k8s-cluster --silence-cluster with the real
// Alertmanager. A dry-run says it would silence the cluster and makes no silence; a run
// killed (kill -9) after silencing the cluster and abandoned expires its silence; a run
// killed mid-batch and resumed reuses the silence it recorded (one silence for the run,
// its id in the run's values), and it is expired at the end; upgrade-k8s-node takes the
// flag too; without an alertmanager the flag is bad input.
func TestUpgradeSilenceCluster(t *testing.T) {
	am := lab.NeedAlertmanager(t)
	w, s := stackWorld(t, 2, 0)
	_, dst := nextPatch(t)
	workers := []string{s.Prefix + "-worker-1", s.Prefix + "-worker-2"}
	args := []string{"upgrade-k8s-cluster", "--cluster-name", "toolsbeta", "--dst-version", dst, "--force", "--delete-emptydir-data", "--timeout", "90s", "--silence-cluster"}

	r := w.run(args...)
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "--silence-cluster: cluster toolsbeta has no alertmanager") {
		t.Errorf("--silence-cluster without an alertmanager:\n%s", r.stderr)
	}
	addClusterKeys(t, w.config, "    alertmanager:\n      url: "+am.URL+"\n")
	amc, err := silences.New(silences.Options{URL: am.URL})
	if err != nil {
		t.Fatal(err)
	}
	// ofRun returns the Alertmanager's silences of the cluster made by run id.
	ofRun := func(id string) []silences.Silence {
		t.Helper()
		all, err := amc.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var out []silences.Silence
		for _, sil := range all {
			if strings.HasSuffix(sil.Comment, silences.Marker(id, "cluster toolsbeta")) {
				out = append(out, sil)
			}
		}
		return out
	}
	total := func() int {
		all, err := amc.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return len(all)
	}
	// killAfterSilence starts the upgrade and kills it (SIGKILL) once the cluster is
	// silenced and a node of batch-1 is drained.
	killAfterSilence := func() *state.Run {
		t.Helper()
		cmd := w.command(args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Wait()
		defer cmd.Process.Kill()
		run := w.waitFor(func(r *state.Run) bool {
			s := r.Step("batch-1/drain")
			return r.Cookbook == "upgrade-k8s-cluster" && r.Status == state.Running && s != nil && s.Status == state.Done
		})
		cmd.Process.Signal(syscall.SIGKILL)
		return run
	}

	r = w.run(append([]string{"--dry-run"}, args...)...)
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "DRY-RUN: would silence alerts of cluster toolsbeta for 3h0m0s") || !strings.Contains(r.stderr, s.Prefix) {
		t.Errorf("dry-run does not say it would silence the cluster:\n%s", r.stderr)
	}
	if n := total(); n != 0 {
		t.Fatalf("the dry-run made %d silence(s)", n)
	}

	// Killed, then abandoned: the silence is expired.
	run := killAfterSilence()
	got := ofRun(run.ID)
	if len(got) != 1 || !got[0].Live() || !strings.HasPrefix(got[0].Comment, "upgrade to v"+dst+" ") {
		t.Fatalf("silences of the killed run: %+v", got)
	}
	for _, n := range workers {
		if !strings.Contains(got[0].Matchers[0].Value, s.Prefix) || strings.Contains(got[0].Matchers[0].Value, n) {
			t.Errorf("the cluster silence's matcher %s is not the roles' prefixes", got[0].Matchers[0])
		}
	}
	wantCode(t, w.run("abandon", run.ID), 0)
	if got := ofRun(run.ID); len(got) != 1 || got[0].Live() {
		t.Errorf("silences of the abandoned run: %+v", got)
	}

	// Killed mid-batch, then resumed: the same silence, expired at the end.
	run = killAfterSilence()
	first := ofRun(run.ID)
	if len(first) != 1 || !first[0].Live() {
		t.Fatalf("silences of the killed run: %+v", first)
	}
	r = w.run("resume", run.ID)
	wantCode(t, r, 0)
	got = ofRun(run.ID)
	if len(got) != 1 || got[0].ID != first[0].ID || got[0].Live() {
		t.Errorf("silences of the resumed run: %+v, want %s only, expired", got, first[0].ID)
	}
	for _, step := range []string{"silence-cluster", "unsilence-cluster"} {
		if !strings.Contains(r.stderr, step) {
			t.Errorf("the resumed run's log does not show %s:\n%s", step, r.stderr)
		}
	}
	var done *state.Run
	for _, rr := range w.runs() {
		if rr.ID == run.ID {
			done = rr
		}
	}
	if done == nil || done.Status != state.Done || string(done.Values["cluster-silence-id"]) != `"`+first[0].ID+`"` {
		t.Errorf("the run's record: %+v", done)
	}
	for _, n := range workers {
		if node := nodeOf(t, s, n); node == nil || node.Status.NodeInfo.KubeletVersion != "v"+dst {
			t.Errorf("%s not upgraded: %+v", n, node)
		}
	}

	// upgrade-k8s-node takes the flag: nothing left to upgrade, still one silence, expired.
	r = w.run("upgrade-k8s-node", "--cluster-name", "toolsbeta", "--hostname", workers[0], "--dst-version", dst, "--silence-cluster")
	wantCode(t, r, 0)
	node := w.runs()[0]
	if got := ofRun(node.ID); len(got) != 1 || got[0].Live() {
		t.Errorf("silences of upgrade-k8s-node: %+v", got)
	}
}
