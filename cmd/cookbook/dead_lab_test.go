package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"example.com/cookbook/config"
	"example.com/cookbook/lab"
	"example.com/cookbook/lab/stack"
)

// terminatingOn returns the pods on the node whose deletion started (Terminating).
func terminatingOn(t *testing.T, s *stack.Stack, node string) []string {
	t.Helper()
	pods, err := s.CP.Client.CoreV1().Pods("").List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			out = append(out, p.Namespace+"/"+p.Name)
		}
	}
	return out
}

// TestRemoveDeadOrHeldWorkers powers a worker off through the cloud's compute API: its
// Node turns NotReady and the pods evicted from it stay Terminating, as with a dead
// kubelet. A drain that waits for them never ends (shown first with a short drain
// timeout); remove-k8s-node with --skip-wait-for-delete-timeout ends unattended, the
// Node and the server gone.
func TestRemoveDeadOrHeldWorkers(t *testing.T) {
	w, s := stackWorld(t, 3, -1)
	ctx := context.Background()
	dead := s.Prefix + "-worker-1"
	// A pod surely on the node to be powered off (the scheduler may have put none of the
	// sample workload there): the drain has something to evict and wait for.
	if _, err := s.CP.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "on-dead"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pinned := lab.Deployment("on-dead", "pinned", 1).Spec.Template
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "pinned", Namespace: "on-dead", Labels: pinned.Labels}, Spec: pinned.Spec}
	pod.Spec.NodeName = dead
	if _, err := s.CP.Client.CoreV1().Pods("on-dead").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := s.CP.WaitPodsRunning(ctx, "on-dead", 1, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.PowerOff(ctx, dead); err != nil {
		t.Fatal(err)
	}
	if err := s.CP.WaitNodeReady(ctx, dead, false, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, srv := range s.Cloud.Servers() {
		if srv.Name == dead && srv.Status != "SHUTOFF" {
			t.Fatalf("server %s is %s after os-stop, want SHUTOFF", dead, srv.Status)
		}
	}

	// Waiting for every pod: the drain times out on the pods the dead kubelet never
	// finishes.
	r := w.run("--yes", "remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker", "--hostname-to-remove", dead,
		"--force", "--delete-emptydir-data", "--drain-timeout", "8s", "--skip-wait-for-delete-timeout", "0")
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, "still on the node") {
		t.Errorf("stuck drain: no pods named as still on the node:\n%s", r.stderr)
	}
	stuck := terminatingOn(t, s, dead)
	if len(stuck) == 0 {
		t.Fatalf("no pod Terminating on the powered-off %s: the lab does not reproduce a dead kubelet", dead)
	}
	if nodeOf(t, s, dead) == nil {
		t.Fatal("the failed removal deleted the Node")
	}
	wantCode(t, w.run("abandon", w.runs()[0].ID), 0)

	// A dry-run of the removal writes nothing and says which pods it would not wait for.
	before := s.Cloud.TotalWrites()
	r = w.run("--dry-run", "--yes", "remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker", "--hostname-to-remove", dead,
		"--force", "--delete-emptydir-data", "--skip-wait-for-delete-timeout", "1s")
	wantCode(t, r, 0)
	if s.Cloud.TotalWrites() != before || !strings.Contains(r.stderr, "not waited for (the node is not Ready and their deletion started more than 1s ago)") {
		t.Errorf("dry-run: %d cloud writes:\n%s", s.Cloud.TotalWrites()-before, r.stderr)
	}

	// The cluster's default (drain.skipWaitForDeleteTimeout) lets the pods go: the removal
	// ends unattended.
	cfg, err := os.ReadFile(s.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg = []byte(strings.Replace(string(cfg), "    roles:\n", "    drain: {skipWaitForDeleteTimeout: 3s}\n    roles:\n", 1))
	if err := os.WriteFile(s.ConfigPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r = w.run("--yes", "remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker", "--hostname-to-remove", dead,
		"--force", "--delete-emptydir-data")
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "not waited for (the node is not Ready") {
		t.Errorf("the plan does not name the pods it does not wait for:\n%s", r.stderr)
	}
	if nodeOf(t, s, dead) != nil {
		t.Errorf("node %s still in Kubernetes", dead)
	}
	for _, srv := range s.Cloud.Servers() {
		if srv.Name == dead {
			t.Errorf("server %s still in the cloud (%s)", dead, srv.Status)
		}
	}
	t.Logf("removal of the powered-off worker: %s", time.Since(start).Round(time.Millisecond))

	// A node found dead by the drain itself: the pods it evicts are waited for until
	// their deletion is 2s old, then let go.
	dead = s.Prefix + "-worker-2"
	if err := s.PowerOff(ctx, dead); err != nil {
		t.Fatal(err)
	}
	if err := s.CP.WaitNodeReady(ctx, dead, false, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	r = w.run("--yes", "remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker", "--hostname-to-remove", dead,
		"--force", "--delete-emptydir-data", "--skip-wait-for-delete-timeout", "2s")
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "pod(s) any longer: the node is not Ready and their deletion started more than 2s ago") {
		t.Errorf("the drain does not say which pods it stopped waiting for:\n%s", r.stderr)
	}
	if nodeOf(t, s, dead) != nil {
		t.Errorf("node %s still in Kubernetes", dead)
	}

	// --ignore-drain-failure (the Toolforge cookbook's --force): a drain that a
	// disruption budget holds fails, and the removal goes on. The role is named by an
	// alias, as the Toolforge cookbooks spell it.
	cfg = []byte(strings.Replace(string(cfg), "        prefix: "+s.Prefix+"-worker\n", "        prefix: "+s.Prefix+"-worker\n        aliases: [k8s_worker]\n", 1))
	if err := os.WriteFile(s.ConfigPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	last := s.Prefix + "-worker-3"
	ns := "held"
	if _, err := s.CP.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CP.Client.AppsV1().Deployments(ns).Create(ctx, lab.Deployment(ns, "solo", 1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	one := intstr.FromInt32(1)
	if _, err := s.CP.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, lab.PDB(ns, "solo", nil, &one), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := s.CP.WaitPodsRunning(ctx, ns, 1, time.Minute); err != nil {
		t.Fatal(err)
	}
	args := []string{"--yes", "remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "k8s_worker", "--hostname-to-remove", last,
		"--force-removal", "--force", "--delete-emptydir-data", "--drain-timeout", "3s"}
	r = w.run(args...)
	wantCode(t, r, 1)
	if nodeOf(t, s, last) == nil {
		t.Fatal("a failed drain without --ignore-drain-failure removed the node")
	}
	wantCode(t, w.run("abandon", w.runs()[0].ID), 0)
	r = w.run(append(args, "--ignore-drain-failure")...)
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "drain failed; removing the node anyway (--ignore-drain-failure)") {
		t.Errorf("no warning about the ignored drain failure:\n%s", r.stderr)
	}
	if nodeOf(t, s, last) != nil {
		t.Errorf("node %s still in Kubernetes after --ignore-drain-failure", last)
	}
	for _, srv := range s.Cloud.Servers() {
		if srv.Name == last {
			t.Errorf("server %s still in the cloud", last)
		}
	}
}

// TestRebootStuckWorkers: a powered-off worker (NotReady, SSH unreachable) is hard-rebooted
// through OpenStack and a worker whose kubelet is down but whose SSH answers is rebooted
// over SSH; both come back Ready with a new boot id. A dry-run writes nothing, and
// without --yes the confirmation names them.
func TestRebootStuckWorkers(t *testing.T) {
	w, s := stackWorld(t, 3, -1)
	ctx := context.Background()
	dead, hung, fine := s.Prefix+"-worker-1", s.Prefix+"-worker-2", s.Prefix+"-worker-3"
	if err := s.PowerOff(ctx, dead); err != nil {
		t.Fatal(err)
	}
	if err := s.CP.SetNodeNotReady(ctx, hung); err != nil {
		t.Fatal(err)
	}
	boot := map[string]string{}
	for _, n := range []string{dead, hung, fine} {
		boot[n] = nodeOf(t, s, n).Status.NodeInfo.BootID
	}
	time.Sleep(2 * time.Second)
	args := []string{"reboot-stuck-workers", "--cluster-name", "toolsbeta", "--not-ready-for", "1s", "--max-unavailable", "2",
		"--force", "--delete-emptydir-data", "--skip-wait-for-delete-timeout", "1s", "--reboot-timeout", "1m"}

	// Too short a time NotReady: nothing is stuck, bad input, nothing changed.
	r := w.run("reboot-stuck-workers", "--cluster-name", "toolsbeta", "--not-ready-for", "1h")
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "no worker of cluster toolsbeta has been NotReady for more than 1h (--not-ready-for)") {
		t.Errorf("nothing stuck:\n%s", r.stderr)
	}

	// Without a terminal and without --yes, the confirmation names them and aborts.
	r = w.run(args...)
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "Reboot 2 stuck worker(s) of cluster toolsbeta ("+dead+": NotReady for ") ||
		!strings.Contains(r.stderr, "; "+hung+": NotReady for ") {
		t.Errorf("confirmation does not name the stuck workers:\n%s", r.stderr)
	}

	// Dry-run: every read, no write.
	since, before := time.Now(), s.Cloud.TotalWrites()
	r = w.run(append([]string{"--dry-run", "--yes"}, args...)...)
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "DRY-RUN: would hard reboot server "+dead) {
		t.Errorf("dry-run does not say it would hard-reboot %s:\n%s", dead, r.stderr)
	}
	wantSkippedCounted(t, "dry-run reboot-stuck-workers", r)
	time.Sleep(time.Second)
	if writes, _ := s.CP.WriteRequests(ctx, since, "cookbook"); len(writes) != 0 || s.Cloud.TotalWrites() != before {
		t.Errorf("dry-run made %d API writes, %d cloud writes", len(writes), s.Cloud.TotalWrites()-before)
	}

	r = w.run(append([]string{"--yes"}, args...)...)
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "SSH cannot reach the node; hard rebooting it through OpenStack") {
		t.Errorf("no hard reboot of the powered-off %s:\n%s", dead, r.stderr)
	}
	for _, n := range []string{dead, hung, fine} {
		node := nodeOf(t, s, n)
		changed := node.Status.NodeInfo.BootID != boot[n]
		if changed != (n != fine) || !lab.IsReady(node) || node.Spec.Unschedulable {
			t.Errorf("%s: boot id changed %v, Ready %v, cordoned %v", n, changed, lab.IsReady(node), node.Spec.Unschedulable)
		}
	}
	soft := false
	for _, c := range commandsOn(s, hung) {
		soft = soft || strings.HasSuffix(c, "systemctl reboot")
	}
	if !soft {
		t.Errorf("%s, reachable over SSH, was not rebooted with systemctl reboot: %v", hung, commandsOn(s, hung))
	}
	if srv := serverOf(t, s, dead); srv.Status != "ACTIVE" {
		t.Errorf("server %s is %s after its hard reboot", dead, srv.Status)
	}
}

// TestRebootStuckWorkersPrometheus: with the cluster's prometheus set to the lab's real
// Prometheus, scraping the node exporter of each lab VM (targets address:port, so the
// instance labels are IP:port, mapped to nodes by their InternalIP), a Ready worker whose
// VM reports processes stuck on NFS is picked (the confirmation says why) and rebooted
// over SSH (new boot id, Ready, uncordoned; the reboot ends its stuck processes, as
// Prometheus then sees); a worker reporting 0 and one not scraped are left alone, as is
// a host that is no node of the cluster. --query without a prometheus, a bad --query and
// a Prometheus that does not answer are refused before any write; a dry-run writes
// nothing.
func TestRebootStuckWorkersPrometheus(t *testing.T) {
	p := lab.NeedPrometheus(t)
	w, s := stackWorld(t, 3, -1)
	ctx := context.Background()
	stuck, zero, quiet := s.Prefix+"-worker-1", s.Prefix+"-worker-2", s.Prefix+"-worker-3"
	if err := s.Fleet.SetStuckProcs(stuck, 4); err != nil {
		t.Fatal(err)
	}
	// A host outside the cluster reporting stuck processes too.
	elsewhere, err := lab.StartNodeExporter("127.0.0.1:0", func() int { return 2 })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { elsewhere.Close() })
	targets := []string{elsewhere.Addr}
	quietTarget := net.JoinHostPort(serverOf(t, s, quiet).Address, strconv.Itoa(s.Fleet.MetricsPort))
	for _, tg := range s.Fleet.MetricsTargets() {
		if tg != quietTarget {
			targets = append(targets, tg)
		}
	}
	if err := p.SetTargets(targets...); err != nil {
		t.Fatal(err)
	}
	stuckTarget := net.JoinHostPort(serverOf(t, s, stuck).Address, strconv.Itoa(s.Fleet.MetricsPort))
	boot := map[string]string{}
	for _, n := range []string{stuck, zero, quiet} {
		boot[n] = nodeOf(t, s, n).Status.NodeInfo.BootID
	}
	args := []string{"reboot-stuck-workers", "--cluster-name", "toolsbeta", "--force", "--delete-emptydir-data", "--reboot-timeout", "1m"}
	since, before := time.Now(), s.Cloud.TotalWrites()
	// noWrites: no API write since since but, with lock, the run's own lock Lease.
	noWrites := func(what string, lock bool) {
		t.Helper()
		time.Sleep(time.Second)
		writes, err := s.CP.WriteRequests(ctx, since, "cookbook")
		if err != nil {
			t.Fatal(err)
		}
		var other []string
		for _, e := range writes {
			if !lock || e.Resource != "leases" || e.Name != "cookbook-lock" {
				other = append(other, e.Verb+" "+e.RequestURI)
			}
		}
		if len(other) != 0 || s.Cloud.TotalWrites() != before {
			t.Errorf("%s made API writes %v, %d cloud writes", what, other, s.Cloud.TotalWrites()-before)
		}
	}

	r := w.run(append([]string{"--yes"}, append(args, "--query", "up")...)...)
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "--query: cluster toolsbeta has no prometheus url in the configuration") {
		t.Errorf("--query without a prometheus:\n%s", r.stderr)
	}

	// A Prometheus that does not answer decides nothing: exit 1 naming it.
	down := "    prometheus:\n      url: http://127.0.0.1:1\n"
	addClusterKeys(t, w.config, down)
	r = w.run(append([]string{"--yes"}, args...)...)
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, "query the Prometheus at http://127.0.0.1:1 for") {
		t.Errorf("an unreachable Prometheus is not named:\n%s", r.stderr)
	}
	setClusterKeys(t, w.config, down, "    prometheus:\n      url: "+p.URL+"\n")
	if err := p.WaitQuery(ctx, "sum(prometheus_k8s_nfs_stuck_total_procs) by (instance) > 0",
		map[string]float64{stuckTarget: 4, elsewhere.Addr: 2}); err != nil {
		t.Fatal(err)
	}

	r = w.run(append([]string{"--yes"}, append(args, "--query", "sum(prometheus_k8s_nfs_stuck_total_procs")...)...)
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, `--query "sum(prometheus_k8s_nfs_stuck_total_procs": the Prometheus at `+p.URL+" refuses it") {
		t.Errorf("bad --query:\n%s", r.stderr)
	}

	// Without a terminal and without --yes, the confirmation names the worker and why.
	r = w.run(args...)
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "Reboot 1 stuck worker(s) of cluster toolsbeta ("+stuck+": Prometheus query returned 4)?") {
		t.Errorf("confirmation does not name %s and why:\n%s", stuck, r.stderr)
	}

	// Refused before the lock: no write at all, no Lease, no lock file, no run.
	noWrites("the refused runs", false)
	if _, err := s.CP.Client.CoordinationV1().Leases(config.DefaultLockNamespace).Get(ctx, config.DefaultLockName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the refused runs left the cookbook-lock Lease (err %v)", err)
	}
	if _, err := os.Stat(filepath.Join(w.stateDir, "locks", "toolsbeta.lock")); !os.IsNotExist(err) || len(w.runs()) != 0 {
		t.Errorf("the refused runs left a lock file (stat: %v) or %d runs", err, len(w.runs()))
	}

	since = time.Now()
	r = w.run(append([]string{"--dry-run", "--yes"}, args...)...)
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "DRY-RUN: would") || !strings.Contains(r.stderr, "no worker of the cluster; left alone instance=127.0.0.1 value=2") {
		t.Errorf("dry-run says no write or not the foreign instance it leaves alone:\n%s", r.stderr)
	}
	wantSkippedCounted(t, "dry-run reboot-stuck-workers", r)
	noWrites("the dry-run", false)

	r = w.run(append([]string{"--yes"}, args...)...)
	wantCode(t, r, 0)
	for _, n := range []string{stuck, zero, quiet} {
		node := nodeOf(t, s, n)
		changed := node.Status.NodeInfo.BootID != boot[n]
		if changed != (n == stuck) || !lab.IsReady(node) || node.Spec.Unschedulable {
			t.Errorf("%s: boot id changed %v, Ready %v, cordoned %v", n, changed, lab.IsReady(node), node.Spec.Unschedulable)
		}
	}
	soft := false
	for _, c := range commandsOn(s, stuck) {
		soft = soft || strings.HasSuffix(c, "systemctl reboot")
	}
	if !soft {
		t.Errorf("%s was not rebooted with systemctl reboot: %v", stuck, commandsOn(s, stuck))
	}
	// The reboot ended the stuck processes: Prometheus sees only the other host's.
	if err := p.WaitQuery(ctx, "sum(prometheus_k8s_nfs_stuck_total_procs) by (instance) > 0", map[string]float64{elsewhere.Addr: 2}); err != nil {
		t.Error(err)
	}
}
