package main

import (
	"context"
	"slices"
	"strings"
	"testing"

	"example.com/cookbook/lab/stack"
)

// TestExternalEtcdControlNodes: in a lab whose etcd is external (three etcd VMs, as
// Toolforge's; the configuration's etcd.external names them and their certificates) a
// control node is added, an original one removed, another rebooted and a third replaced,
// all with etcd asked on the first etcd host with the configured certificates, no etcd
// member added or removed (the etcd VMs' membership is the same at the end) and no
// etcdctl member remove anywhere; with the first etcd VM powered off the next one answers, and adding a
// control node is refused (exit 2, naming the dead member) with nothing changed.
func TestExternalEtcdControlNodes(t *testing.T) {
	w, s := stackWorldOf(t, stack.Options{Controls: 3, Workers: 1, NFSWorkers: -1, ExternalEtcd: 3})
	p, e := s.Prefix+"-control-", s.Prefix+"-etcd-"
	members := []string{e + "1", e + "2", e + "3"}
	if got := etcdNames(s); slices.Compare(got, members) != 0 {
		t.Fatalf("etcd members at the start: %v, want %v", got, members)
	}

	// A rehearsal reads the external etcd for real and writes nothing.
	m := markWrites(s)
	r := w.run("--dry-run", "add-k8s-node", "--cluster-name", "toolsbeta", "--role", "control")
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "etcd healthy members=3 healthy=3") {
		t.Errorf("dry-run add of a control node:\n%s", r.stderr)
	}
	m.none(t, "dry-run add-k8s-node --role control")

	// Add: etcd healthy before and after; the new control node is no member.
	r = w.run("add-k8s-node", "--cluster-name", "toolsbeta", "--role", "control")
	wantCode(t, r, 0)
	controlReady(t, s, p+"4")
	for _, want := range []string{"step=check-etcd\n", "step=check-etcd-after\n", "etcd healthy members=3 healthy=3"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the add's log has no %q:\n%s", want, r.stderr)
		}
	}
	if got := etcdNames(s); slices.Compare(got, members) != 0 {
		t.Errorf("etcd members after the add: %v", got)
	}

	// Remove an original control node: no member to remove.
	r = w.run("--yes", "remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "control", "--hostname-to-remove", p+"1")
	wantCode(t, r, 0)
	controlGone(t, s, p+"1")
	if !strings.Contains(r.stderr, "etcd is external: "+p+"1 has no member") {
		t.Errorf("remove-etcd-member was not skipped as external:\n%s", r.stderr)
	}
	if got := etcdNames(s); slices.Compare(got, members) != 0 {
		t.Errorf("etcd members after the removal: %v", got)
	}

	// Reboot a control node: etcd checked before and after, no quorum question.
	r = w.run("roll-reboot", "--cluster-name", "toolsbeta", "--hostname-list", p+"2")
	wantCode(t, r, 0)
	for _, want := range []string{"step=batch-1/check-etcd progress", "step=batch-1/check-etcd-after progress", "etcd healthy members=3 healthy=3"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the control node's reboot has no %q:\n%s", want, r.stderr)
		}
	}

	// Replace a control node (a new one added, then the old one removed): no member
	// added or removed either.
	r = w.run("--yes", "replace-k8s-nodes", "--cluster-name", "toolsbeta", "--role", "control", "--image", "debian-13.0-trixie", "--hostname-list", p+"3")
	wantCode(t, r, 0)
	controlGone(t, s, p+"3")
	controlReady(t, s, p+"5")
	if !strings.Contains(r.stderr, "etcd is external: "+p+"3 has no member") {
		t.Errorf("the replacement's remove-etcd-member was not skipped as external:\n%s", r.stderr)
	}

	// etcdctl ran on the first etcd host only, with the configured certificates; never
	// a member remove, never on a control node.
	asked := 0
	for _, rec := range s.Fleet.History() {
		line := strings.Join(rec.Argv, " ")
		if !strings.Contains(line, "etcdctl") {
			continue
		}
		asked++
		if rec.VM != e+"1" || rec.ExitCode > 1 || strings.Contains(line, "member remove") ||
			!strings.Contains(line, "--cacert "+stack.EtcdCerts.CACert+" --cert "+stack.EtcdCerts.Cert+" --key "+stack.EtcdCerts.Key) {
			t.Errorf("etcdctl on %s (exit %d): %s", rec.VM, rec.ExitCode, line)
		}
	}
	if asked == 0 {
		t.Error("etcdctl never ran")
	}
	if got := etcdNames(s); slices.Compare(got, members) != 0 {
		t.Errorf("etcd members at the end: %v", got)
	}

	// The first etcd VM loses power: the second answers, and a control node is not
	// added while a member is down (refused before the run, in a rehearsal too).
	if err := s.PowerOff(context.Background(), e+"1"); err != nil {
		t.Fatal(err)
	}
	servers, writes, runs := len(s.Cloud.Servers()), s.Cloud.TotalWrites(), len(w.runs())
	e2 := serverOf(t, s, e+"2")
	for _, dry := range []bool{true, false} {
		args := []string{"add-k8s-node", "--cluster-name", "toolsbeta", "--role", "control"}
		if dry {
			args = append([]string{"--dry-run"}, args...)
		}
		r = w.run(args...)
		wantCode(t, r, 2)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		last := lines[len(lines)-1]
		if !strings.Contains(last, "etcd (asked on "+e2.Address+"): not every member is started and healthy: "+e+"1 (") ||
			!strings.Contains(last, "refused (a control node is added only while every etcd member is started and healthy)") {
			t.Errorf("add (dry-run %v) with an etcd member down:\n%s", dry, r.stderr)
		}
		if strings.Contains(r.stderr, "step=") {
			t.Errorf("add (dry-run %v) with an etcd member down ran a step:\n%s", dry, r.stderr)
		}
	}
	if len(s.Cloud.Servers()) != servers || s.Cloud.TotalWrites() != writes || len(w.runs()) != runs {
		t.Errorf("the refused adds changed something: servers %d -> %d, cloud writes %d -> %d, runs %d -> %d",
			servers, len(s.Cloud.Servers()), writes, s.Cloud.TotalWrites(), runs, len(w.runs()))
	}
	if got := etcdNames(s); slices.Compare(got, members) != 0 {
		t.Errorf("etcd members after the refusal: %v", got)
	}
}
