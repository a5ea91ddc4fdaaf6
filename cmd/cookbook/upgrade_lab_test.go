package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/lock"
	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/lab"
	"example.com/cookbook/lab/stack"
	"example.com/cookbook/lab/vm"
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

// TestUpgradeK8s: upgrade-k8s-node and upgrade-k8s-cluster in the lab, 1 control node,
// 2 workers and 2 NFS workers, to the next patch: --dry-run writes nothing and says what
// it would run (kubeadm upgrade apply on the control node, before any worker); bad input
// is exit 2 with no write; the preflight lists every problem (a node without the
// packages, a NotReady node, a skipped minor, workers before the control plane) and
// writes nothing; --control-only
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
	r = w.run(append([]string{"--dry-run", "upgrade-k8s-node", "--hostname", control}, common...)...)
	wantCode(t, r, 0)
	m.none(t, "upgrade-k8s-node --dry-run")
	if !strings.Contains(r.stderr, "kubeadm upgrade apply v"+dst+" -y host=") || !strings.Contains(r.stderr, "preflight of the upgrade of toolsbeta to v"+dst+": no problem") {
		t.Errorf("the dry-run of a control node does not show the preflight and the apply:\n%s", r.stderr)
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

	// The preflight: every problem at once, exit 2, nothing written.
	s.Fleet.VM(serverIDOf(t, s, workers[0])).SetKubeRepo(false)
	if err := s.CP.SetNodeNotReady(ctx, workers[1]); err != nil {
		t.Fatal(err)
	}
	zero := intstr.FromInt32(0)
	pdbs := s.CP.Client.PolicyV1().PodDisruptionBudgets("sample")
	frozen := lab.PDB("sample", "cache-frozen", &zero, nil)
	frozen.Spec.Selector.MatchLabels = map[string]string{"app": "cache"}
	if _, err := pdbs.Create(ctx, frozen, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The disruption controller's status first: the preflight tells a budget that can
	// never allow a disruption (maxUnavailable 0) by it.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		p, err := pdbs.Get(ctx, "cache-frozen", metav1.GetOptions{})
		if err == nil && p.Status.ObservedGeneration == p.Generation && p.Status.ExpectedPods > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sample/cache-frozen has no status: %v %+v", err, p)
		}
	}
	m = markWrites(s)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{append([]string{"upgrade-k8s-cluster"}, common...), []string{
			"PodDisruptionBudget sample/cache-frozen (allows 0 disruption(s)",
			") can never allow a disruption: it expects ",
			"node " + workers[0] + ": no package kubeadm=" + dst + "-* in its apt sources",
			"node " + workers[1] + " is not Ready",
		}},
		{[]string{"upgrade-k8s-cluster", "--cluster-name", "toolsbeta", "--dst-version", "1.39.0"}, []string{
			"--dst-version 1.39.0 skips a minor: the control plane is at v" + cur,
			"node " + control + ": no package kubeadm=1.39.0-*",
			"node " + workers[1] + " is not Ready",
		}},
		{append([]string{"upgrade-k8s-node", "--hostname", workers[1]}, common...), []string{
			"the control plane is at v" + cur + " and not every control node at v" + dst + ": upgrade the control nodes before any other kubelet",
			"node " + workers[1] + " is not Ready",
		}},
		{append([]string{"upgrade-k8s-cluster", "--workers-only"}, common...), []string{"upgrade the control nodes before any other kubelet"}},
	} {
		r := w.run(tc.args...)
		wantCode(t, r, 2)
		for _, want := range tc.want {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("%v: the preflight does not say %q:\n%s", tc.args, want, r.stderr)
			}
		}
	}
	m.none(t, "refused preflights")
	s.Fleet.VM(serverIDOf(t, s, workers[0])).SetKubeRepo(true)
	if err := pdbs.Delete(ctx, "cache-frozen", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := s.CP.SetNodeReady(ctx, workers[1], ""); err != nil {
		t.Fatal(err)
	}

	// The control plane: no terminal and no --yes, the apply is not confirmed; resumed
	// with --yes, it is done.
	r = w.run(append([]string{"upgrade-k8s-cluster", "--control-only"}, common...)...)
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

	// The workers in Toolforge's two chunks (--batches 2 --batch-number I, natural
	// order), side by side from two terminals of one host: chunks of one upgrade on
	// disjoint nodes share the cluster's lock. Each drains one node at a time; the cluster
	// has up to two down. A run taking every worker meanwhile is refused, naming a chunk
	// and the nodes both would take. The second chunk is killed (kill -9) and resumed
	// while the first runs: the resume takes the same claim back.
	nfs := []string{s.Prefix + "-worker-nfs-1", s.Prefix + "-worker-nfs-2"}
	chunks := [][]string{workers, nfs}
	// An earlier install of kubeadm on the first worker was killed midway: dpkg left it
	// unpacked at the target and half-configured (dpkg-query -W prints the new version;
	// apt refuses anything until dpkg --configure -a).
	vmOf(t, s, workers[0]).InterruptInstall("kubeadm", dst+"-1.1")
	results := make([]result, 2)
	done := make(chan int, 2)
	chunkArgs := func(i int) []string {
		return append([]string{"upgrade-k8s-cluster", "--max-unavailable", "1", "--batches", "2", "--batch-number", strconv.Itoa(i + 1)}, common...)
	}
	cw := watchCluster(t, s)
	go func() {
		results[0] = w.run(chunkArgs(0)...)
		done <- 0
	}()
	// The second chunk is killed (kill -9) once both hold the lease, and resumed.
	second := w.command(chunkArgs(1)...)
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	leases := &lock.Leases{Client: s.CP.Client, Namespace: config.DefaultLockNamespace, Name: config.DefaultLockName}
	var both []lock.LiveEntry
	for deadline := time.Now().Add(time.Minute); len(both) < 2 && len(done) == 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		both, _ = leases.Holders(ctx)
	}
	if len(both) != 2 {
		t.Fatalf("the two chunks never held the cluster's lease together: %+v", both)
	}
	r = w.run(append([]string{"upgrade-k8s-cluster", "--max-unavailable", "1", "--batches", "1", "--batch-number", "1"}, common...)...)
	wantCode(t, r, exitLocked)
	msg := ""
	for _, line := range strings.Split(r.stderr, "\n") {
		if strings.HasPrefix(line, "cookbook: error: ") {
			msg += line
		}
	}
	named := false
	for _, e := range both {
		named = named || strings.Contains(msg, e.Holder.RunID) && strings.Contains(msg, strings.Join(e.Holder.Claim.Nodes, ", "))
	}
	if !strings.Contains(msg, "that this run would take too") || !named {
		t.Errorf("a run overlapping the chunks is not refused in one error line naming a chunk and its nodes:\n%s", r.stderr)
	}
	killed := second.Process.Pid
	second.Process.Signal(syscall.SIGKILL)
	second.Wait()
	var id string
	for _, e := range both {
		if e.Holder.Claim.Nodes[0] == nfs[0] {
			id = e.Holder.RunID
		}
	}
	go func() {
		results[1] = w.run("resume", id)
		done <- 1
	}()
	// The resume takes the same claim back at once (its killed process was on this
	// host), beside the first chunk, still running.
	var retaken []lock.LiveEntry
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		all, _ := leases.Holders(ctx)
		if len(all) == 2 && all[0].Live && all[1].Live && (all[0].Holder.RunID == id || all[1].Holder.RunID == id) {
			if e := all[0]; e.Holder.RunID == id && e.Holder.PID != killed || all[1].Holder.RunID == id && all[1].Holder.PID != killed {
				retaken = all
				break
			}
		}
	}
	if retaken == nil {
		t.Errorf("the resumed chunk %s never held the lease beside the first chunk", id)
	}
	for _, e := range retaken {
		if e.Holder.RunID == id && strings.Join(e.Holder.Claim.Nodes, ",") != strings.Join(nfs, ",") {
			t.Errorf("the resumed chunk claims %v, want %v", e.Holder.Claim.Nodes, nfs)
		}
	}
	<-done
	<-done
	if most := cw.finish(); most > 2 {
		t.Errorf("%d nodes unschedulable at once; two chunks of --max-unavailable 1 take at most 2", most)
	}
	for i, chunk := range chunks {
		r := results[i]
		wantCode(t, r, 0)
		if !strings.Contains(r.stderr, "plan: batch 1/2: "+chunk[0]) || !strings.Contains(r.stderr, "plan: batch 2/2: "+chunk[1]) {
			t.Errorf("chunk %d of 2 is not %v one at a time:\n%s", i+1, chunk, r.stderr)
		}
	}
	if want := "node " + workers[0] + ": dpkg was interrupted: kubeadm " + dst + "-1.1 (iF) not configured; running dpkg --configure -a"; !strings.Contains(results[0].stderr, want) {
		t.Errorf("the first chunk does not say %q:\n%s", want, results[0].stderr)
	}
	var ran []*state.Run
	for _, run := range w.runs() {
		if run.Cookbook == "upgrade-k8s-cluster" && run.Args["batches"] == "2" {
			ran = append(ran, run)
		}
	}
	if len(ran) != 2 || ran[0].EndedAt == nil || ran[1].EndedAt == nil || !ran[0].StartedAt.Before(*ran[1].EndedAt) || !ran[1].StartedAt.Before(*ran[0].EndedAt) {
		t.Errorf("the two chunks did not run side by side: %+v", ran)
	}
	workers = append(workers, nfs...)
	for _, n := range workers {
		node := nodeOf(t, s, n)
		if node == nil || node.Status.NodeInfo.KubeletVersion != "v"+dst || node.Spec.Unschedulable {
			t.Errorf("%s after the upgrade: %+v", n, node)
		}
		vm := vmOf(t, s, n)
		for _, p := range []string{"kubeadm", "kubelet", "kubectl"} {
			if vm.PackageVersion(p) != dst+"-1.1" || !vm.Held(p) || vm.PackageStatus(p) != "installed" {
				t.Errorf("%s: %s at %s held %v, %s; want %s-1.1 held, installed", n, p, vm.PackageVersion(p), vm.Held(p), vm.PackageStatus(p), dst)
			}
		}
		cmds := strings.Join(commandsOn(s, n), "\n")
		if want := map[bool]int{true: 1, false: 0}[n == workers[0]]; strings.Count(cmds, "dpkg --configure -a") != want {
			t.Errorf("%s ran dpkg --configure -a %d times, want %d:\n%s", n, strings.Count(cmds, "dpkg --configure -a"), want, cmds)
		}
		// Packages are installed once, whatever the kill interrupted (the install step
		// reads dpkg first). A step the kill interrupted after its command ran and
		// before the run recorded it done runs again on resume: kubeadm upgrade node,
		// daemon-reload and a kubelet restart are each run once per attempt of their step.
		for want, step := range map[string]string{
			"apt-get install -y kubeadm=" + dst + "-1.1":                         "",
			"apt-get install -y kubelet=" + dst + "-1.1 kubectl=" + dst + "-1.1": "",
			"kubeadm upgrade node":                                               "kubeadm-upgrade-node",
			"systemctl daemon-reload":                                            "daemon-reload",
			"systemctl restart kubelet":                                          "restart-kubelet",
		} {
			most := 1
			if step != "" {
				most = max(1, nodeStepAttempts(w, n, step))
			}
			if got := strings.Count(cmds, want); got < 1 || got > most {
				t.Errorf("%s ran %q %d times, want once (at most %d: attempts of its step):\n%s", n, want, got, most, cmds)
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

// serverIDOf is the id of the server of a name.
func serverIDOf(t *testing.T, s *stack.Stack, name string) string {
	t.Helper()
	for _, srv := range s.Cloud.Servers() {
		if srv.Name == name {
			return srv.ID
		}
	}
	t.Fatalf("no server %s", name)
	return ""
}

// vmOf is the lab VM of a server name.
// nodeStepAttempts is how many times the runs in w's state dir started step for node
// (a rolling run's batch-N/<step>, whose description names the batch's nodes), over all
// of them.
func nodeStepAttempts(w *world, node, step string) int {
	n := 0
	for _, run := range w.runs() {
		for _, st := range run.Steps {
			if strings.HasSuffix(st.Name, "/"+step) && slices.Contains(strings.FieldsFunc(st.Description, func(r rune) bool { return r == ' ' || r == ',' }), node) {
				n += st.Attempts
			}
		}
	}
	return n
}

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

// TestUpgradeK8sClusterCrashes: the Toolforge-shaped lab (3 control nodes, 4 workers, 2
// NFS workers) at v1.36.5 is upgraded to v1.37.1 by upgrade-k8s-cluster
// --max-unavailable 2: a dry-run first writes nothing; then the run is killed (SIGKILL)
// at 20 or more seeded moments and resumed (with --yes) until done. The end state is an
// uninterrupted run's, run meanwhile in a second lab of the same shape and compared
// (upgradeEndState: every node's version, readiness and cordon, kubeadm-config, static
// pods, each node's packages, holds and installs): every node reports v1.37.1, kubeadm-config and every control
// node's static pods say v1.37.1, the admin's cordon is kept and nothing else is left
// cordoned, never more than 2 nodes unschedulable, no PodDisruptionBudget violated
// (watched), each node's packages installed once, one kubeadm upgrade apply in the whole
// record, an audit line per node.
func TestUpgradeK8sClusterCrashes(t *testing.T) {
	const from, to = "1.36.5", "1.37.1"
	w, s := stackWorldOf(t, stack.Options{Controls: 3, Workers: 4, NFSWorkers: 2, KubernetesVersion: from})
	ctx := context.Background()
	rng := seededRand(t)
	var nodes, controls []string
	for _, srv := range s.Cloud.Servers() {
		nodes = append(nodes, srv.Name)
		if strings.Contains(srv.Name, "-control-") {
			controls = append(controls, srv.Name)
		}
	}
	if len(nodes) != 9 || len(controls) != 3 {
		t.Fatalf("lab nodes %v", nodes)
	}
	adminCordoned := s.Prefix + "-worker-nfs-2"
	// The uninterrupted run's lab, the same shape.
	w2, s2 := stackWorldOf(t, stack.Options{Controls: 3, Workers: 4, NFSWorkers: 2, KubernetesVersion: from})
	for _, lab := range []*stack.Stack{s, s2} {
		if _, err := lab.CP.Client.CoreV1().Nodes().Patch(ctx, adminCordoned, types.MergePatchType, []byte(`{"spec":{"unschedulable":true}}`), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"--yes", "upgrade-k8s-cluster", "--cluster-name", "toolsbeta", "--dst-version", to, "--max-unavailable", "2", "--force", "--delete-emptydir-data", "--timeout", "90s"}

	m := markWrites(s)
	r := w.run(append([]string{"--dry-run"}, args...)...)
	wantCode(t, r, 0)
	m.none(t, "upgrade-k8s-cluster --dry-run")
	if strings.Count(r.stderr, "kubeadm upgrade apply v"+to+" -y host=") != 1 || strings.Count(r.stderr, "kubeadm upgrade node host=") != 8 {
		t.Errorf("the dry-run does not apply on one control node and upgrade-node the 8 others:\n%s", r.stderr)
	}

	web := minRunningPods(t, s, "sample", "web", 4)
	api := minRunningPods(t, s, "sample", "api", 3)
	uninterrupted := make(chan result, 1)
	go func() { uninterrupted <- w2.run(args...) }()
	cw := watchCluster(t, s)
	kills, id := crashResumingWith(t, w, rng, 24, 3*time.Second, []string{"--yes"}, args...)
	maxUnsched := cw.finish()
	if r := <-uninterrupted; r.code != 0 {
		t.Fatalf("the uninterrupted run: exit %d\n%s", r.code, r.stderr)
	}
	if got, want := upgradeEndState(t, s, nodes, controls), upgradeEndState(t, s2, nodes, controls); got != want {
		t.Errorf("the crashed and resumed run's end state differs from the uninterrupted run's:\n--- crashed+resumed\n%s--- uninterrupted\n%s", got, want)
	}
	t.Logf("run %s: %d kills", id, kills)
	if kills < 20 {
		t.Errorf("only %d kills", kills)
	}
	if fewest := web(); fewest < 3 {
		t.Errorf("web (PDB maxUnavailable 1 of 4) had %d pods running at once", fewest)
	}
	if fewest := api(); fewest < 2 {
		t.Errorf("api (PDB minAvailable 2) had %d pods running at once", fewest)
	}
	if maxUnsched > 2 {
		t.Errorf("%d nodes were unschedulable at once, more than --max-unavailable 2", maxUnsched)
	}
	if v, _ := s.CP.ClusterVersion(ctx); v != "v"+to {
		t.Errorf("kubeadm-config says %s, want v%s", v, to)
	}
	audit, _ := os.ReadFile(s.AuditPath)
	applies := 0
	for _, n := range nodes {
		node := nodeOf(t, s, n)
		if node == nil || node.Status.NodeInfo.KubeletVersion != "v"+to || !lab.IsReady(node) || node.Spec.Unschedulable != (n == adminCordoned) {
			t.Errorf("%s after the upgrade: %+v", n, node)
		}
		cmds := strings.Join(commandsOn(s, n), "\n")
		for _, want := range []string{"apt-get install -y kubeadm=" + to + "-1.1", "apt-get install -y kubelet=" + to + "-1.1 kubectl=" + to + "-1.1"} {
			if strings.Count(cmds, want) != 1 {
				t.Errorf("%s ran %q %d times, want once", n, want, strings.Count(cmds, want))
			}
		}
		applies += strings.Count(cmds, "kubeadm upgrade apply")
		if want := "upgraded node " + n + " from Kubernetes v" + from + " to v" + to; !strings.Contains(string(audit), want) {
			t.Errorf("no audit line %q", want)
		}
	}
	if applies != 1 {
		t.Errorf("kubeadm upgrade apply ran %d times in the whole record, want once", applies)
	}
	for _, n := range controls {
		if pods, err := s.CP.StaticPodVersions(ctx, n); err != nil || pods["kube-apiserver"] != "v"+to || pods["kube-controller-manager"] != "v"+to || pods["kube-scheduler"] != "v"+to {
			t.Errorf("static pods of %s: %v %v", n, pods, err)
		}
	}
}

// upgradeEndState is what an upgrade leaves, one line per fact: kubeadm-config's
// version; per node its kubelet version, readiness and cordon, its kubeadm, kubelet and
// kubectl versions and holds, how many times each was installed and kubeadm upgrade
// apply run; per control node its static pods' versions.
func upgradeEndState(t *testing.T, s *stack.Stack, nodes, controls []string) string {
	t.Helper()
	ctx := context.Background()
	var b strings.Builder
	cv, err := s.CP.ClusterVersion(ctx)
	fmt.Fprintf(&b, "kubeadm-config: %s %v\n", cv, err)
	for _, n := range nodes {
		node := nodeOf(t, s, n)
		if node == nil {
			fmt.Fprintf(&b, "%s: no Node\n", n)
			continue
		}
		fmt.Fprintf(&b, "%s: kubelet %s ready %v unschedulable %v\n", n, node.Status.NodeInfo.KubeletVersion, lab.IsReady(node), node.Spec.Unschedulable)
		v := vmOf(t, s, n)
		cmds := strings.Join(commandsOn(s, n), "\n")
		for _, p := range []string{"kubeadm", "kubelet", "kubectl"} {
			fmt.Fprintf(&b, "%s: %s %s held %v installed %d time(s)\n", n, p, v.PackageVersion(p), v.Held(p), strings.Count(cmds, " "+p+"="))
		}
		fmt.Fprintf(&b, "%s: kubeadm upgrade apply %d time(s)\n", n, strings.Count(cmds, "kubeadm upgrade apply"))
	}
	for _, n := range controls {
		pods, err := s.CP.StaticPodVersions(ctx, n)
		fmt.Fprintf(&b, "%s: static pods %v %v\n", n, pods, err)
	}
	return b.String()
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
	// --yes: the control node goes first, and its kubeadm upgrade apply asks.
	args := []string{"--yes", "upgrade-k8s-cluster", "--cluster-name", "toolsbeta", "--dst-version", dst, "--force", "--delete-emptydir-data", "--timeout", "90s", "--silence-cluster"}

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
	r = w.run("resume", "--yes", run.ID)
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
