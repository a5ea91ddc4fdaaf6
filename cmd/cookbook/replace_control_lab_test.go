package main

import (
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/lab"
	"example.com/cookbook/lab/stack"
)

// watchControl polls, every 50 ms until stopped, the Ready Nodes labelled control-plane
// and the etcd members; stop returns the fewest Ready control Nodes and the fewest and
// most etcd members seen.
func watchControl(t *testing.T, s *stack.Stack) (stop func() (minReady, minMembers, maxMembers int)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	minReady, minMembers, maxMembers := 1<<30, 1<<30, 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			list, err := s.CP.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: "node-role.kubernetes.io/control-plane"})
			if err == nil {
				ready := 0
				for i := range list.Items {
					if lab.IsReady(&list.Items[i]) {
						ready++
					}
				}
				minReady = min(minReady, ready)
			}
			n := len(s.Fleet.EtcdMembers())
			minMembers, maxMembers = min(minMembers, n), max(maxMembers, n)
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return func() (int, int, int) {
		cancel()
		wg.Wait()
		return minReady, minMembers, maxMembers
	}
}

// TestReplaceControlNodes: replace-k8s-nodes --role control on a lab of three control
// nodes (stacked etcd) replaces all three, one at a time although --max-surge is 3 (said
// in the log): each new control node joins with the certificate key, etcd checked before
// and after each add and each removal; never fewer than three Ready control Nodes nor
// three etcd members, never more than four; at the end three members, all healthy, all
// on the new image; no certificate key or bootstrap token in the output, state dir or
// audit log. A --dry-run before writes nothing. Then, with a control node powered off, a new run is refused (exit 2) with
// nothing changed.
func TestReplaceControlNodes(t *testing.T) {
	start := time.Now()
	w, s := stackWorldOf(t, stack.Options{Controls: 3, Workers: 1, NFSWorkers: -1})
	p := s.Prefix + "-control-"
	const trixie = "debian-13.0-trixie"
	olds := []string{p + "1", p + "2", p + "3"}
	if got := etcdNames(s); slices.Compare(got, olds) != 0 {
		t.Fatalf("etcd members at the start: %v", got)
	}
	// A rehearsal reads etcd for real and writes nothing.
	mk := markWrites(s)
	r := w.run("--dry-run", "replace-k8s-nodes", "--cluster-name", "toolsbeta", "--role", "control", "--image", trixie)
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "DRY-RUN: would create server "+p+"4") || !strings.Contains(r.stderr, "DRY-RUN: would delete server "+p+"1") || !strings.Contains(r.stderr, "etcd healthy members=3 healthy=3") {
		t.Errorf("dry-run replacement of the control nodes:\n%s", r.stderr)
	}
	mk.none(t, "dry-run replace-k8s-nodes --role control")

	stop := watchControl(t, s)
	r = w.run("replace-k8s-nodes", "--cluster-name", "toolsbeta", "--role", "control", "--image", trixie, "--max-surge", "3", "--force", "--delete-emptydir-data")
	minReady, minMembers, maxMembers := stop()
	wantCode(t, r, 0)
	key := s.Fleet.CertificateKey()
	if minReady < 3 || minMembers < 3 || maxMembers > 4 {
		t.Errorf("during the replacement: fewest Ready control Nodes %d (want 3), etcd members between %d and %d (want 3..4)", minReady, minMembers, maxMembers)
	}
	news := []string{p + "4", p + "5", p + "6"}
	for i, want := range []string{
		"--max-surge 3: control nodes are replaced one at a time",
		"plan: batch 1/3: " + olds[0] + " (debian-12.0-bookworm) -> " + news[0],
		"plan: batch 3/3: " + olds[2] + " (debian-12.0-bookworm) -> " + news[2],
		"progress: 3/3 done, 0 in progress, 0 left",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("log line %d: no %q:\n%s", i, want, r.stderr)
		}
	}
	// Each batch: etcd checked before the add (3 members), after the add (4, the new one
	// a member), before the removal and after it (3 healthy, the old one gone).
	for b := range olds {
		tag := regexp.QuoteMeta("batch-" + string(rune('1'+b)) + "/")
		for _, step := range []string{"check-etcd", "check-etcd-after", "check-etcd-removal", "check-etcd-after-removal"} {
			if !regexp.MustCompile(`(?m)step=` + tag + regexp.QuoteMeta(step) + `(\s|$)`).MatchString(r.stderr) {
				t.Errorf("batch %d: no step %s:\n%s", b+1, step, r.stderr)
			}
		}
	}
	if n := strings.Count(r.stderr, "etcd healthy members=4 healthy=4"); n < 3 {
		t.Errorf("etcd healthy with 4 members %d times, want one after each add at least", n)
	}
	if n := strings.Count(r.stderr, "etcd healthy members=3 healthy=3"); n < 6 {
		t.Errorf("etcd healthy with 3 members %d times, want before each add and after each removal", n)
	}
	if got := etcdNames(s); slices.Compare(got, news) != 0 {
		t.Errorf("etcd members at the end: %v, want %v", got, news)
	}
	// The last etcd check (check-etcd-after of the last removal) saw 3 members, all healthy.
	if i := strings.LastIndex(r.stderr, "etcd healthy "); i < 0 || !strings.HasPrefix(r.stderr[i:], "etcd healthy members=3 healthy=3") {
		t.Errorf("the last etcd check is not 3 members healthy:\n%s", r.stderr)
	}
	for _, n := range news {
		controlReady(t, s, n)
		if srv := serverOf(t, s, n); s.Fleet.VM(srv.ID).Image != trixie {
			t.Errorf("%s runs %s, want %s", n, s.Fleet.VM(srv.ID).Image, trixie)
		}
	}
	for _, o := range olds {
		controlGone(t, s, o)
	}
	var joined int
	for _, n := range news {
		for _, c := range commandsOn(s, n) {
			if strings.HasPrefix(c, "kubeadm join") && strings.Contains(c, "--control-plane --certificate-key ") {
				joined++
			}
		}
	}
	if joined != 3 {
		t.Errorf("%d control-plane joins with a certificate key, want 3", joined)
	}
	if ids := bootstrapTokens(t, s); len(ids) != 0 {
		t.Errorf("bootstrap tokens left: %v", ids)
	}
	audit, err := os.ReadFile(s.AuditPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(audit), "replace-k8s-nodes of toolsbeta finished: 3 control node(s) replaced") {
		t.Errorf("audit log:\n%s", audit)
	}
	noneHolds(t, []string{key}, []string{r.stderr, r.stdout, string(audit)}, w.stateDir)
	if m := wholeToken.Find(audit); m != nil {
		t.Errorf("the audit log holds a bootstrap token: %s", m)
	}

	// A configuration written before the replacement names the old control nodes: each is
	// skipped with one warning, and etcd is asked on the labelled (new) ones.
	cfg, err := os.ReadFile(s.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	stale := strings.Replace(string(cfg), "    roles:\n", "    controlNodes: ["+strings.Join(olds, ", ")+"]\n    roles:\n", 1)
	if err := os.WriteFile(s.ConfigPath, []byte(stale), 0o600); err != nil {
		t.Fatal(err)
	}
	r = w.run("--dry-run", "replace-k8s-nodes", "--cluster-name", "toolsbeta", "--role", "control", "--image", "debian-12.0-bookworm")
	if err := os.WriteFile(s.ConfigPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	wantCode(t, r, 0)
	for _, o := range olds {
		if n := strings.Count(r.stderr, "clusters.toolsbeta.controlNodes: "+o+" is no node of the cluster (replaced since the configuration was written?): skipped"); n != 1 {
			t.Errorf("stale controlNodes: %d warning(s) about %s, want 1:\n%s", n, o, r.stderr)
		}
	}
	if !strings.Contains(r.stderr, "no node of clusters.toolsbeta.controlNodes is in the cluster: using the nodes labelled node-role.kubernetes.io/control-plane ("+strings.Join(news, ", ")+")") ||
		!strings.Contains(r.stderr, "etcd healthy members=3 healthy=3") {
		t.Errorf("stale controlNodes: etcd not read on the labelled control nodes:\n%s", r.stderr)
	}

	// A control node powered off: etcd is not healthy, a new replacement is refused before
	// anything is recorded or written.
	if err := s.Fleet.PowerOff(serverOf(t, s, news[2]).ID); err != nil {
		t.Fatal(err)
	}
	m, runs := markWrites(s), len(w.runs())
	r = w.run("replace-k8s-nodes", "--cluster-name", "toolsbeta", "--role", "control", "--image", "debian-12.0-bookworm")
	if r.code != 2 || !strings.Contains(r.stderr, "not every member is started and healthy: "+news[2]+" (") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Errorf("replacement with a member down: exit %d, want 2 and one line naming %s:\n%s", r.code, news[2], r.stderr)
	}
	m.none(t, "refused replace-k8s-nodes --role control")
	if len(w.runs()) != runs {
		t.Errorf("the refused replacement recorded a run")
	}
	t.Logf("runtime %s", time.Since(start).Round(time.Second))
}
