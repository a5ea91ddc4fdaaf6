package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"example.com/cookbook/lab"
	"example.com/cookbook/lab/stack"
)

// etcdNames returns the names of the lab's etcd members, sorted.
func etcdNames(s *stack.Stack) []string {
	var out []string
	for _, m := range s.Fleet.EtcdMembers() {
		out = append(out, m.Name)
	}
	slices.Sort(out)
	return out
}

// noneHolds fails the test if a file under one of dirs, or one of texts, holds a secret.
func noneHolds(t *testing.T, secrets []string, texts []string, dirs ...string) {
	t.Helper()
	check := func(where, s string) {
		for _, sec := range secrets {
			if sec != "" && strings.Contains(s, sec) {
				t.Errorf("%s holds the certificate key %s…", where, sec[:8])
			}
		}
	}
	for i, s := range texts {
		check(fmt.Sprintf("output %d", i), s)
	}
	for _, dir := range dirs {
		_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			b, _ := os.ReadFile(path)
			check(path, string(b))
			return nil
		})
		noWholeToken(t, dir)
	}
}

// controlReady checks that a control node is Ready with its label, and one server.
func controlReady(t *testing.T, s *stack.Stack, name string) {
	t.Helper()
	n := nodeOf(t, s, name)
	if n == nil || !lab.IsReady(n) {
		t.Fatalf("control node %s missing or not Ready", name)
	}
	if _, ok := n.Labels["node-role.kubernetes.io/control-plane"]; !ok {
		t.Errorf("node %s has no control-plane label: %v", name, n.Labels)
	}
	count := 0
	for _, srv := range s.Cloud.Servers() {
		if srv.Name == name {
			count++
		}
	}
	if count != 1 {
		t.Errorf("%d servers named %s", count, name)
	}
}

// controlGone checks that a removed control node has no Node, server or etcd member.
func controlGone(t *testing.T, s *stack.Stack, name string) {
	t.Helper()
	if nodeOf(t, s, name) != nil {
		t.Errorf("node %s still in Kubernetes", name)
	}
	for _, srv := range s.Cloud.Servers() {
		if srv.Name == name {
			t.Errorf("server %s still in the cloud", name)
		}
	}
	if slices.Contains(etcdNames(s), name) {
		t.Errorf("%s still an etcd member: %v", name, etcdNames(s))
	}
}

// TestControlNodes adds and removes control nodes in a lab of three (stacked etcd, as
// kubeadm sets it up): the certificate-key join, etcd checked around each change, a
// removal refused because it would break etcd's quorum, a powered-off control node
// removed with its member, and kill -9 at seeded moments while adding and removing.
func TestControlNodes(t *testing.T) {
	w, s := stackWorldOf(t, stack.Options{Controls: 3, Workers: 1, NFSWorkers: -1})
	p := s.Prefix + "-control-"
	var keys, outputs []string
	if got := etcdNames(s); len(got) != 3 {
		t.Fatalf("etcd members at the start: %v", got)
	}

	// A rehearsal reads etcd for real and writes nothing.
	m := markWrites(s)
	r := w.run("--dry-run", "add-k8s-node", "--cluster-name", "toolsbeta", "--role", "control")
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "DRY-RUN: would create server "+p+"4") || !strings.Contains(r.stderr, "etcd healthy members=3 healthy=3") {
		t.Errorf("dry-run add of a control node:\n%s", r.stderr)
	}
	wantSkippedCounted(t, "dry-run add-k8s-node --role control", r)
	m.none(t, "dry-run add-k8s-node --role control")

	// Add: etcd checked before and after, the join uses the certificate key.
	r = w.run("add-k8s-node", "--cluster-name", "toolsbeta", "--role", "control")
	wantCode(t, r, 0)
	outputs = append(outputs, r.stderr, r.stdout)
	keys = append(keys, s.Fleet.CertificateKey())
	controlReady(t, s, p+"4")
	if diff := slices.Compare(etcdNames(s), []string{p + "1", p + "2", p + "3", p + "4"}); diff != 0 {
		t.Errorf("etcd members after the add: %v", etcdNames(s))
	}
	for _, want := range []string{"step=check-etcd\n", "etcd healthy members=3 healthy=3", "step=check-etcd-after\n", "etcd healthy members=4 healthy=4"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the add's log has no %q:\n%s", want, r.stderr)
		}
	}
	var uploaded, joined bool
	for _, c := range commandsOn(s, p+"1") {
		uploaded = uploaded || c == "kubeadm init phase upload-certs --upload-certs"
	}
	for _, c := range commandsOn(s, p+"4") {
		joined = joined || (strings.HasPrefix(c, "kubeadm join") && strings.Contains(c, "--control-plane --certificate-key "+keys[0]))
	}
	if !uploaded || !joined || len(keys[0]) != 64 {
		t.Errorf("certificates uploaded on %s1: %v; %s4 joined with --control-plane --certificate-key: %v", p, uploaded, p, joined)
	}
	if ids := bootstrapTokens(t, s); len(ids) != 0 {
		t.Errorf("bootstrap tokens left: %v", ids)
	}

	// Remove it: its Node is deleted before kubeadm reset, which then cannot read the
	// node's configuration and leaves the member in (its etcd stopped), as kubeadm v1.37
	// does; remove-etcd-member removes it from another control node; etcd has three
	// again.
	var c4ID string
	for _, m := range s.Fleet.EtcdMembers() {
		if m.Name == p+"4" {
			c4ID = fmt.Sprintf("%x", m.ID)
		}
	}
	r = w.run("--yes", "remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "control", "--hostname-to-remove", p+"4")
	wantCode(t, r, 0)
	outputs = append(outputs, r.stderr, r.stdout)
	controlGone(t, s, p+"4")
	if got := etcdNames(s); len(got) != 3 {
		t.Errorf("etcd members after the removal: %v", got)
	}
	removedBy := ""
	for _, n := range []string{p + "1", p + "2", p + "3"} {
		for _, c := range commandsOn(s, n) {
			if strings.HasPrefix(c, "etcdctl ") && strings.HasSuffix(c, "member remove "+c4ID) {
				removedBy = n
			}
		}
	}
	if removedBy == "" || !strings.Contains(r.stderr, "removed the etcd member node="+p+"4") {
		t.Errorf("remove-etcd-member did not remove the member %s that kubeadm reset left (etcdctl member remove on another control node):\n%s", c4ID, r.stderr)
	}

	// kill -9 at seeded moments while adding a control node and while removing it, then
	// resume: each time the end is an uninterrupted run's (one server, a Ready labelled
	// node and a member; then none of them).
	rng := seededRand(t)
	addKills, removeKills := 0, 0
	for round := 0; round < 12 && (addKills < 10 || removeKills < 10); round++ {
		before := etcdNames(s)
		k, id := crash(t, w, rng, 6, 900*time.Millisecond, "add-k8s-node", "--cluster-name", "toolsbeta", "--role", "control")
		addKills += k
		keys = append(keys, s.Fleet.CertificateKey())
		added := ""
		for _, n := range etcdNames(s) {
			if !slices.Contains(before, n) {
				added = n
			}
		}
		if added == "" || len(etcdNames(s)) != 4 {
			t.Fatalf("round %d: etcd members after the killed add %s: %v (before %v)", round, id, etcdNames(s), before)
		}
		controlReady(t, s, added)
		k, id = crash(t, w, rng, 6, 700*time.Millisecond, "--yes", "remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "control", "--hostname-to-remove", added)
		removeKills += k
		controlGone(t, s, added)
		if got := etcdNames(s); slices.Compare(got, before) != 0 {
			t.Fatalf("round %d: etcd members after the killed removal %s: %v, want %v", round, id, got, before)
		}
	}
	t.Logf("kill -9: %d while adding, %d while removing control nodes", addKills, removeKills)
	if addKills < 10 || removeKills < 10 {
		t.Errorf("only %d kills while adding and %d while removing (want 10 each)", addKills, removeKills)
	}

	// A control node rebooted: etcd checked before and after (its member healthy again).
	r = w.run("roll-reboot", "--cluster-name", "toolsbeta", "--hostname-list", p+"2")
	wantCode(t, r, 0)
	for _, want := range []string{"step=batch-1/check-etcd progress", "step=batch-1/check-etcd-after progress", "etcd healthy members=3 healthy=3"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the control node's reboot has no %q:\n%s", want, r.stderr)
		}
	}

	// control-3 loses power: removing control-1 would leave one healthy member of two,
	// no quorum: refused, --force-removal or not, with nothing changed.
	c3 := serverOf(t, s, p+"3")
	if err := s.Fleet.PowerOff(c3.ID); err != nil {
		t.Fatal(err)
	}
	writes, runs := s.Cloud.TotalWrites(), len(w.runs())
	r = w.run("--yes", "remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "control", "--hostname-to-remove", p+"1", "--force-removal")
	wantCode(t, r, 2)
	outputs = append(outputs, r.stderr, r.stdout)
	if !strings.Contains(r.stderr, "removing "+p+"1 would leave 1 healthy etcd member(s) of 2, fewer than the quorum of 2") || !strings.Contains(r.stderr, "--force-removal does not override this") {
		t.Errorf("refusal:\n%s", r.stderr)
	}
	if s.Cloud.TotalWrites() != writes || len(w.runs()) != runs || len(etcdNames(s)) != 3 || nodeOf(t, s, p+"1") == nil {
		t.Errorf("the refused removal changed something: cloud writes %d -> %d, runs %d -> %d, etcd %v", writes, s.Cloud.TotalWrites(), runs, len(w.runs()), etcdNames(s))
	}

	// No control node is added while a member is down: refused before the run starts
	// (exit 2, naming the member), in a rehearsal too, with no run recorded and no API
	// or cloud write (not even the cluster's lock Lease).
	servers, since := len(s.Cloud.Servers()), time.Now()
	for _, dry := range []bool{true, false} {
		args := []string{"add-k8s-node", "--cluster-name", "toolsbeta", "--role", "control"}
		if dry {
			args = append([]string{"--dry-run"}, args...)
		}
		r = w.run(args...)
		wantCode(t, r, 2)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		last := lines[len(lines)-1]
		if !strings.Contains(last, "not every member is started and healthy: "+p+"3 (") || !strings.Contains(last, "refused (a control node is added only while every etcd member is started and healthy)") {
			t.Errorf("add (dry-run %v) with a member down:\n%s", dry, r.stderr)
		}
		if strings.Contains(r.stderr, "step=") {
			t.Errorf("add (dry-run %v) with a member down ran a step:\n%s", dry, r.stderr)
		}
	}
	time.Sleep(time.Second) // the audit log is written after the request
	apiWrites, err := s.CP.WriteRequests(context.Background(), since, "cookbook")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Cloud.Servers()) != servers || s.Cloud.TotalWrites() != writes || len(w.runs()) != runs || len(apiWrites) != 0 {
		t.Errorf("the refused adds changed something: servers %d -> %d, cloud writes %d -> %d, runs %d -> %d, API writes %v",
			servers, len(s.Cloud.Servers()), writes, s.Cloud.TotalWrites(), runs, len(w.runs()), apiWrites)
	}

	// Nor is control-1 rebooted: while it is down one member of three would be healthy.
	r = w.run("roll-reboot", "--cluster-name", "toolsbeta", "--hostname-list", p+"1")
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "stopping "+p+"1 would leave 1 healthy etcd member(s) of 3, fewer than the quorum of 2") {
		t.Errorf("reboot refusal:\n%s", r.stderr)
	}
	if s.Cloud.TotalWrites() != writes || nodeOf(t, s, p+"1").Spec.Unschedulable || len(w.runs()) != runs {
		t.Errorf("the refused reboot changed something: cloud writes %d -> %d, runs %d -> %d", writes, s.Cloud.TotalWrites(), runs, len(w.runs()))
	}

	// The powered-off control-3 is removed: kubeadm reset cannot run, so its member is
	// removed with etcdctl member remove on another control node.
	var c3ID string
	for _, m := range s.Fleet.EtcdMembers() {
		if m.Name == p+"3" {
			c3ID = fmt.Sprintf("%x", m.ID)
		}
	}
	r = w.run("--yes", "remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "control", "--hostname-to-remove", p+"3", "--force-removal")
	wantCode(t, r, 0)
	outputs = append(outputs, r.stderr, r.stdout)
	controlGone(t, s, p+"3")
	if diff := slices.Compare(etcdNames(s), []string{p + "1", p + "2"}); diff != 0 {
		t.Errorf("etcd members after removing the dead node: %v", etcdNames(s))
	}
	removed := false
	for _, n := range []string{p + "1", p + "2"} {
		for _, c := range commandsOn(s, n) {
			removed = removed || (strings.HasPrefix(c, "etcdctl ") && strings.HasSuffix(c, "member remove "+c3ID))
		}
	}
	if !removed {
		t.Errorf("no etcdctl member remove %s on another control node:\n%s", c3ID, r.stderr)
	}

	audit, err := os.ReadFile(s.AuditPath)
	if err != nil {
		t.Fatal(err)
	}
	noneHolds(t, keys, append(outputs, string(audit)), w.stateDir)
	if m := wholeToken.Find(audit); m != nil {
		t.Errorf("the audit log holds a bootstrap token: %s", m)
	}
}
