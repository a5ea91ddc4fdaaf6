package main

import (
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/lab"
	"example.com/cookbook/silences"
)

// addClusterKeys adds YAML keys (indented as a cluster's) to the lab cluster's section of
// the generated configuration.
func addClusterKeys(t *testing.T, path, keys string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(b)
	if !strings.Contains(cfg, "\n    roles:\n") {
		t.Fatalf("no roles key in %s:\n%s", path, cfg)
	}
	cfg = strings.Replace(cfg, "\n    roles:\n", "\n"+keys+"    roles:\n", 1)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// setClusterKeys replaces what addClusterKeys added earlier (old) with keys.
func setClusterKeys(t *testing.T, path, old, keys string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("%s lacks %q", path, old)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(b), old, keys, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestRollRebootSilences rolls a reboot over the two nodes of role worker with the real Alertmanager: a
// dry-run only says what it would silence; the run creates exactly one silence per node
// and expires every one by the end; an Alertmanager that does not answer is one warning
// and the run completes.
func TestRollRebootSilences(t *testing.T) {
	am := lab.NeedAlertmanager(t)
	w, s := stackWorld(t, 2, 0)
	amKeys := "    alertmanager:\n      url: " + am.URL + "\n"
	addClusterKeys(t, w.config, amKeys)
	amc, err := silences.New(silences.Options{URL: am.URL})
	if err != nil {
		t.Fatal(err)
	}
	list := func() []silences.Silence {
		t.Helper()
		all, err := amc.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return all
	}
	workers := []string{s.Prefix + "-worker-1", s.Prefix + "-worker-2"}
	args := []string{"roll-reboot", "--cluster-name", "toolsbeta", "--role", "worker", "--force", "--delete-emptydir-data"}

	r := w.run(append([]string{"--dry-run"}, args...)...)
	wantCode(t, r, 0)
	for _, n := range workers {
		if !strings.Contains(r.stderr, "DRY-RUN: would silence alerts of node "+n) {
			t.Errorf("dry-run does not say it would silence %s:\n%s", n, r.stderr)
		}
	}
	if got := list(); len(got) != 0 {
		t.Fatalf("the dry-run made %d silence(s): %+v", len(got), got)
	}

	r = w.run(args...)
	wantCode(t, r, 0)
	if strings.Contains(r.stderr, "Alertmanager failed") {
		t.Errorf("a warning about a working Alertmanager:\n%s", r.stderr)
	}
	got := list()
	var silenced []string
	for _, sil := range got {
		for _, n := range workers {
			if strings.HasSuffix(sil.Comment, ", node "+n+"]") {
				silenced = append(silenced, n)
			}
		}
		if sil.Live() {
			t.Errorf("silence %s (%s) is still %s after the run", sil.ID, sil.Comment, sil.Status.State)
		}
	}
	sort.Strings(silenced)
	if strings.Join(silenced, " ") != strings.Join(workers, " ") || len(got) != len(workers) {
		t.Errorf("silences made: %d for %v, want one for each of %v:\n%+v", len(got), silenced, workers, got)
	}
	for _, step := range []string{"batch-1/silence", "batch-1/unsilence", "batch-2/silence", "batch-2/unsilence"} {
		if !strings.Contains(r.stderr, step) {
			t.Errorf("the log does not show step %s:\n%s", step, r.stderr)
		}
	}

	// Nothing answers on port 1: one warning for the whole run, which completes.
	setClusterKeys(t, w.config, amKeys, "    alertmanager:\n      url: http://127.0.0.1:1\n")
	r = w.run(args...)
	wantCode(t, r, 0)
	if n := strings.Count(r.stderr, "Alertmanager failed"); n != 1 {
		t.Errorf("%d Alertmanager warnings, want 1:\n%s", n, r.stderr)
	}
	if len(list()) != len(workers) {
		t.Errorf("the run with an unreachable Alertmanager changed the real one's silences")
	}

	// Removing a node silences it from before its drain until its server is gone.
	setClusterKeys(t, w.config, "    alertmanager:\n      url: http://127.0.0.1:1\n", amKeys)
	r = w.run("--yes", "remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker", "--hostname-to-remove", workers[1], "--force", "--delete-emptydir-data")
	wantCode(t, r, 0)
	removal := 0
	for _, sil := range list() {
		if strings.HasPrefix(sil.Comment, "removal [cookbook run ") && strings.HasSuffix(sil.Comment, ", node "+workers[1]+"]") {
			removal++
			if sil.Live() {
				t.Errorf("the removal's silence %s is still live", sil.ID)
			}
		}
	}
	if removal != 1 {
		t.Errorf("%d silences for the removal of %s, want 1:\n%+v", removal, workers[1], list())
	}
}

// TestNodeHooks runs hooks that write their expanded placeholders to a file: afterJoin on
// add-k8s-node, afterRemove on remove-k8s-node; a failing beforeRemove hook fails its step
// with its stderr shown, before the node is touched.
func TestNodeHooks(t *testing.T) {
	w, s := stackWorld(t, 1, 0)
	out := filepath.Join(t.TempDir(), "hooks.log")
	line := `echo "$0 {hostname} {fqdn} {role} {cluster} {server_id} {address} $COOKBOOK_NODE" >> ` + out
	addClusterKeys(t, w.config, `    hooks:
      afterJoin:
        - command: [sh, -c, '`+line+`', joined]
      afterRemove:
        - command: [sh, -c, '`+line+`', removed]
`)
	node := s.Prefix + "-worker-2"
	// A dry-run prints the expanded hook and runs nothing.
	r := w.run("--dry-run", "add-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker")
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "DRY-RUN: would run afterJoin hook: sh -c") || !strings.Contains(r.stderr, "joined") {
		t.Errorf("the dry-run does not print the afterJoin hook:\n%s", r.stderr)
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("the dry-run ran the hook")
	}
	r = w.run("add-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker")
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "hook-after-join-1") {
		t.Errorf("no hook-after-join-1 step in the log:\n%s", r.stderr)
	}
	var id, addr string
	for _, srv := range s.Cloud.Servers() {
		if srv.Name == node {
			id, addr = srv.ID, srv.Address
		}
	}
	if id == "" || addr == "" {
		t.Fatalf("no server %s with an address", node)
	}
	fqdn := node
	if d := domainOf(t, w.config); d != "" {
		fqdn += "." + d
	}
	want := strings.Join([]string{"joined", node, fqdn, "worker", "toolsbeta", id, addr, node}, " ") + "\n"
	if b, _ := os.ReadFile(out); string(b) != want {
		t.Fatalf("after add-k8s-node the hooks wrote %q, want %q", b, want)
	}

	r = w.run("--yes", "remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker", "--hostname-to-remove", node, "--force", "--delete-emptydir-data")
	wantCode(t, r, 0)
	want += strings.Join([]string{"removed", node, fqdn, "worker", "toolsbeta", id, addr, node}, " ") + "\n"
	if b, _ := os.ReadFile(out); string(b) != want {
		t.Fatalf("after remove-k8s-node the hooks wrote %q, want %q", b, want)
	}

	// A failing hook fails its step, with its stderr; nothing after it runs.
	setClusterKeys(t, w.config, "    hooks:\n", `    hooks:
      beforeRemove:
        - command: [sh, -c, 'echo "no inventory entry for {hostname}" >&2; exit 3']
`)
	victim := s.Prefix + "-worker-1"
	r = w.run("--yes", "remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker", "--hostname-to-remove", victim, "--force-removal", "--force", "--delete-emptydir-data")
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, "hook-before-remove-1") || !strings.Contains(r.stderr, "exited with status 3") || !strings.Contains(r.stderr, "no inventory entry for "+victim) {
		t.Errorf("a failing hook's step:\n%s", r.stderr)
	}
	if n := nodeOf(t, s, victim); n == nil || n.Spec.Unschedulable {
		t.Errorf("%s was touched after its beforeRemove hook failed", victim)
	}
}

// domainOf returns the lab cluster's domain key, if its configuration has one.
func domainOf(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "domain:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// TestRollRebootSilencesCrash kills a roll-reboot with SIGKILL at seeded random moments
// and resumes it until it is done: the resumed runs reuse the recorded (or found) silence
// of each node, so there is still exactly one per node, and all are expired at the end.
func TestRollRebootSilencesCrash(t *testing.T) {
	am := lab.NeedAlertmanager(t)
	w, s := stackWorld(t, 2, 0)
	addClusterKeys(t, w.config, "    alertmanager:\n      url: "+am.URL+"\n")
	amc, err := silences.New(silences.Options{URL: am.URL})
	if err != nil {
		t.Fatal(err)
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	kills, id := crash(t, w, rand.New(rand.NewSource(seed)), 4, 4*time.Second,
		"roll-reboot", "--cluster-name", "toolsbeta", "--role", "worker", "--force", "--delete-emptydir-data")
	t.Logf("%d kill(s), run %s", kills, id)
	all, err := amc.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, sil := range all {
		count[sil.Comment]++
		if sil.Live() {
			t.Errorf("silence %s (%s) is still live after the run", sil.ID, sil.Comment)
		}
	}
	want := map[string]int{}
	for _, n := range []string{s.Prefix + "-worker-1", s.Prefix + "-worker-2"} {
		want["roll-reboot "+silences.Marker(id, "node "+n)] = 1
	}
	if diff := cmp.Diff(want, count); diff != "" {
		t.Errorf("silences by comment after %d kill(s) (-want +got):\n%s", kills, diff)
	}
}

// TestHookKilledMidwayResumes: add-k8s-node killed (kill -9) while its second afterJoin
// hook runs is resumed: the hook that had finished is not run again, the interrupted one
// runs again to its end, and the run ends done.
func TestHookKilledMidwayResumes(t *testing.T) {
	w, s := stackWorld(t, 1, 0)
	dir := t.TempDir()
	first, second := filepath.Join(dir, "first.log"), filepath.Join(dir, "second.log")
	addClusterKeys(t, w.config, `    hooks:
      afterJoin:
        - command: [sh, -c, 'echo {hostname} >> `+first+`']
        - command: [sh, -c, 'echo start >> `+second+`; sleep 2; echo end >> `+second+`']
`)
	cmd := w.command("add-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if b, _ := os.ReadFile(second); strings.Contains(string(b), "start") {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("add-k8s-node ended before its second hook started: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("the second afterJoin hook never started")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
	run := w.runs()[0]
	if st := run.Step("hook-after-join-2"); st == nil || st.Status != state.Running {
		t.Fatalf("the kill did not land in the second hook: %+v", st)
	}
	wantCode(t, w.run("resume", run.ID), 0)
	b, _ := os.ReadFile(first)
	if got := strings.Count(string(b), s.Prefix+"-worker-2"); got != 1 {
		t.Errorf("the finished first hook ran %d times, want once:\n%s", got, b)
	}
	b, _ = os.ReadFile(second)
	if strings.Count(string(b), "start") < 2 || !strings.Contains(string(b), "end") {
		t.Errorf("the interrupted hook did not run again to its end:\n%s", b)
	}
	if run = w.runs()[0]; run.Status != state.Done {
		t.Errorf("run after resume: %s", run.Status)
	}
}

// TestDrainBeforeDrainHook: the drain cookbook runs the node's beforeDrain hooks after
// its cordon and before its drain, placeholders expanded (the server's id and address
// looked up in the cloud); a dry-run prints the hook and runs nothing.
func TestDrainBeforeDrainHook(t *testing.T) {
	w, s := stackWorld(t, 1, 0)
	out := filepath.Join(t.TempDir(), "hooks.log")
	line := `echo "$0 {hostname} {role} {server_id} {address} $COOKBOOK_NODE" >> ` + out
	addClusterKeys(t, w.config, `    hooks:
      beforeDrain:
        - command: [sh, -c, '`+line+`', draining]
`)
	node := s.Prefix + "-worker-1"
	args := []string{"drain", "--cluster-name", "toolsbeta", "--hostname-to-drain", node, "--force", "--delete-emptydir-data"}
	r := w.run(append([]string{"--dry-run"}, args...)...)
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "DRY-RUN: would run beforeDrain hook: sh -c") {
		t.Errorf("the dry-run does not print the beforeDrain hook:\n%s", r.stderr)
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("the dry-run ran the hook")
	}
	r = w.run(args...)
	wantCode(t, r, 0)
	var id, addr string
	for _, srv := range s.Cloud.Servers() {
		if srv.Name == node {
			id, addr = srv.ID, srv.Address
		}
	}
	want := strings.Join([]string{"draining", node, "worker", id, addr, node}, " ") + "\n"
	if b, _ := os.ReadFile(out); id == "" || string(b) != want {
		t.Errorf("the beforeDrain hook wrote %q, want %q", b, want)
	}
	run := w.runs()[0]
	var names []string
	for _, st := range run.Steps {
		names = append(names, st.Name+":"+string(st.Status))
	}
	if got := strings.Join(names, " "); !strings.Contains(got, "/cordon:done "+node+"/hook-before-drain-1:done "+node+"/drain:done") {
		t.Errorf("steps of the drain: %s", got)
	}
}
