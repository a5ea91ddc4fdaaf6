package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"example.com/cookbook/cookbooks/lock"
	"example.com/cookbook/cookbooks/records"
	"example.com/cookbook/cookbooks/state"
)

// leaseDuration is the shortened lease of these tests.
const leaseDuration = 3 * time.Second

// hostWorld is an operator host: a state dir of its own, the host name host, and the
// lab cluster lab1 locked by the Lease lease (kube-system), shortened to leaseDuration.
// Hosts of one test share the toy's work dir (the same machine plays them all).
func hostWorld(t *testing.T, host, lease string, shareDir *world) *world {
	t.Helper()
	w := labWorld(t)
	cfg, err := os.ReadFile(w.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg = []byte(strings.Replace(string(cfg), "ssh: {user: root}", fmt.Sprintf("ssh: {user: root}\n    lock: {name: %s, duration: %s, renewEvery: 500ms}", lease, leaseDuration), 1))
	if err := os.WriteFile(w.config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	w.env = []string{"COOKBOOK_HOSTNAME=" + host}
	if shareDir != nil {
		w.dir = shareDir.dir
	}
	t.Cleanup(func() {
		cp.Client.CoordinationV1().Leases("kube-system").Delete(context.Background(), lease, metav1.DeleteOptions{})
	})
	return w
}

// labLease returns the Lease's holder and last renewal.
func labLease(t *testing.T, name string) (*lock.Holder, time.Time) {
	t.Helper()
	l, err := cp.Client.CoordinationV1().Leases("kube-system").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return lock.LeaseHolder(l)
}

// TestLeaseTwoOperatorHosts: two cookbook processes with different state dirs and host
// names. The second is refused (exit 3) naming the first; after kill -9 of the first it
// is still refused until the lease expires, then takes the lease over with a warning
// and resumes the first's run from the cluster's record to an uninterrupted run's end.
func TestLeaseTwoOperatorHosts(t *testing.T) {
	a := hostWorld(t, "host-a", "t-two-hosts", nil)
	b := hostWorld(t, "host-b", "t-two-hosts", a)
	hold := filepath.Join(a.dir, "hold")
	os.WriteFile(hold, nil, 0o600)
	cmd := a.command(a.toy()...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	run := a.waitFor(func(r *state.Run) bool {
		s := r.Step("item-1/mark")
		return s != nil && s.Status == state.Running
	})

	r := b.run(b.toy("--new")...)
	wantCode(t, r, 3)
	for _, want := range []string{"cluster lab1 is locked", run.ID, "host-a", fmt.Sprintf("pid %d", cmd.Process.Pid), "lease kube-system/t-two-hosts last renewed"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("lock message %q lacks %q", r.stderr, want)
		}
	}
	if len(b.runs()) != 0 {
		t.Error("the refused run left a record")
	}
	// The other host sees the run, live, from the cluster's record.
	r = b.run("runs")
	if !strings.Contains(r.stdout, run.ID) || !strings.Contains(r.stdout, "running on host-a") {
		t.Errorf("runs on host-b:\n%s%s", r.stdout, r.stderr)
	}

	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	// Fresh lease of another host: still refused.
	wantCode(t, b.run("resume", run.ID), 3)
	// Waiting out the (shortened) lease.
	_, renewed := labLease(t, "t-two-hosts")
	time.Sleep(time.Until(renewed.Add(leaseDuration + 200*time.Millisecond)))
	r = b.run("runs")
	if !strings.Contains(r.stdout, "stopped (lease expired") {
		t.Errorf("runs on host-b after the lease expired:\n%s%s", r.stdout, r.stderr)
	}
	os.Remove(hold)
	r = b.run("resume", run.ID)
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "took over the cluster's lease") || !strings.Contains(r.stderr, run.ID) || !strings.Contains(r.stderr, "host-a") {
		t.Errorf("no takeover warning naming the previous holder:\n%s", r.stderr)
	}
	// The end state of an uninterrupted run: every marker once, the token the first
	// host recorded (a value carried by the cluster's record).
	if got := a.markers(); len(got) != 4 {
		t.Errorf("markers = %v", got)
	}
	if res, _ := os.ReadFile(filepath.Join(a.dir, "result")); string(res) != "token-of-"+run.ID {
		t.Errorf("result = %q, want the first host's token", res)
	}
	if runs := b.runs(); len(runs) != 1 || runs[0].ID != run.ID || runs[0].Status != state.Done || runs[0].Holder.Host != "host-b" {
		t.Errorf("host-b's records: %+v", runs)
	}
	cm, err := cp.Client.CoreV1().ConfigMaps("kube-system").Get(context.Background(), records.Name(run.ID), metav1.GetOptions{})
	if err != nil || cm.Labels[records.LabelStatus] != "done" || cm.Labels[records.LabelCluster] != "lab1" || cm.Labels[records.LabelCookbook] != "toy" {
		t.Errorf("cluster record: %v %v", cm.GetLabels(), err)
	}
	// The first host sees the run done: the cluster's copy is newer than its own.
	if r := a.run("runs", "show", run.ID); !strings.Contains(r.stdout, "status:   done") || !strings.Contains(r.stdout, "@host-b") {
		t.Errorf("runs show on host-a:\n%s%s", r.stdout, r.stderr)
	}
	if h, _ := labLease(t, "t-two-hosts"); h != nil {
		t.Errorf("lease still held after the run: %+v", h)
	}
}

// TestLeaseStolenStopsAtStepBoundary: a run whose Lease is taken behind its back stops
// at the next step boundary, saved as failed, exit 1, saying why.
func TestLeaseStolenStopsAtStepBoundary(t *testing.T) {
	a := hostWorld(t, "host-a", "t-stolen", nil)
	cmd := a.command(a.toy("--step-time", "2s")...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	run := a.waitFor(func(r *state.Run) bool {
		s := r.Step("item-1/mark")
		return s != nil && s.Status == state.Running
	})
	ctx := context.Background()
	api := cp.Client.CoordinationV1().Leases("kube-system")
	l, err := api.Get(ctx, "t-stolen", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l.Spec.HolderIdentity = ptr.To("thief")
	l.Annotations[lock.HolderAnnotation] = `{"runId":"run-of-the-thief","host":"host-x"}`
	if _, err := api.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit %v, want 1\n%s", err, stderr.String())
	}
	for _, want := range []string{"lock was lost", "run-of-the-thief", "cookbook resume " + run.ID} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	got := a.runs()[0]
	if got.Status != state.Failed || got.Step("item-1/mark").Status != state.Done || got.Step("item-2/mark").Status != state.Pending {
		t.Errorf("run after the lease was stolen: %s, item-1 %s, item-2 %s", got.Status, got.Step("item-1/mark").Status, got.Step("item-2/mark").Status)
	}
	// The thief's Lease is left alone.
	if h, _ := labLease(t, "t-stolen"); h == nil || h.RunID != "run-of-the-thief" {
		t.Errorf("lease after the loser stopped: %+v", h)
	}
}

// TestLeaseDryRunWritesNothing: a dry-run, `runs` and `runs show` of a lease cluster
// take no lock and write no Lease and no ConfigMap (the API server's audit log); a real
// run writes both and releases the Lease.
func TestLeaseDryRunWritesNothing(t *testing.T) {
	w := hostWorld(t, "host-a", "t-dry", nil)
	ctx := context.Background()
	since := time.Now()
	wantCode(t, w.run("--dry-run", "toy", "--cluster-name", "lab1", "--dir", w.dir), 0)
	wantCode(t, w.run("runs"), 0)
	time.Sleep(time.Second) // the audit log is written asynchronously
	if writes, _ := cp.WriteRequests(ctx, since, "cookbook"); len(writes) != 0 {
		t.Errorf("dry-run made %d writes: %+v", len(writes), writes)
	}
	if _, err := cp.Client.CoordinationV1().Leases("kube-system").Get(ctx, "t-dry", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a Lease exists after the dry-run: %v", err)
	}
	wantCode(t, w.run(w.toy()...), 0)
	id := w.runs()[0].ID
	time.Sleep(time.Second)
	writes, _ := cp.WriteRequests(ctx, since, "cookbook")
	var leases, cms int
	for _, wr := range writes {
		s := fmt.Sprint(wr)
		switch {
		case strings.Contains(s, "leases"):
			leases++
		case strings.Contains(s, "configmaps"):
			cms++
		}
	}
	if leases == 0 || cms == 0 {
		t.Errorf("a real run wrote %d Lease and %d ConfigMap requests: %+v", leases, cms, writes)
	}
	if h, _ := labLease(t, "t-dry"); h != nil {
		t.Errorf("lease not released: %+v", h)
	}
	since = time.Now()
	wantCode(t, w.run("runs", "show", id), 0)
	wantCode(t, w.run("--dry-run", "resume", id), 2) // done: nothing to resume
	time.Sleep(time.Second)
	if writes, _ := cp.WriteRequests(ctx, since, "cookbook"); len(writes) != 0 {
		t.Errorf("runs show made %d writes: %+v", len(writes), writes)
	}
}

// follower is `runs show --follow ID` running on world w, its stdout and stderr kept.
type follower struct {
	cmd         *exec.Cmd
	out, errOut syncBuffer
	done        chan error
}

func startFollower(t *testing.T, w *world, id string) *follower {
	t.Helper()
	f := &follower{cmd: w.command("runs", "show", "--follow", id), done: make(chan error, 1)}
	f.cmd.Stdout, f.cmd.Stderr = &f.out, &f.errOut
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { f.done <- f.cmd.Wait() }()
	t.Cleanup(func() { f.cmd.Process.Kill(); <-f.done })
	return f
}

// waitOut waits until the follower's output has want.
func (f *follower) waitOut(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(f.out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("the follower does not print %q:\n%s\nstderr:\n%s", want, f.out.String(), f.errOut.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// exit waits for the follower to end and returns its exit code.
func (f *follower) exit(t *testing.T) int {
	t.Helper()
	select {
	case err := <-f.done:
		f.done <- err // for the cleanup
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(30 * time.Second):
		t.Fatalf("the follower did not end with the run:\n%s", f.out.String())
	}
	return -1
}

// TestRunsShowFollowOtherHost: `runs show ID --follow` on host B (its own state dir,
// nothing of the run there) follows a run of host A through the cluster's record: it
// prints the steps as they finish while the run goes on, the end of the run's log, and
// exits with the run's outcome: 0 when it is done, 1 when it failed, 1 once the Lease of
// a run killed with SIGKILL expires.
func TestRunsShowFollowOtherHost(t *testing.T) {
	a := hostWorld(t, "host-a", "t-follow", nil)
	b := hostWorld(t, "host-b", "t-follow", a)
	hold := filepath.Join(a.dir, "hold")
	// startHeld starts the toy on host A, held in item-1/mark, and a follower on host B.
	startHeld := func(extra ...string) (*exec.Cmd, *state.Run, *follower) {
		t.Helper()
		os.WriteFile(hold, nil, 0o600)
		cmd := a.command(a.toy(append([]string{"--new", "--step-time", "600ms"}, extra...)...)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		run := a.waitFor(func(r *state.Run) bool {
			s := r.Step("item-1/mark")
			return r.Status == state.Running && s != nil && s.Status == state.Running
		})
		f := startFollower(t, b, run.ID)
		f.waitOut(t, "--- run "+run.ID+" on host-a: steps and log from its record in cluster lab1 ---")
		if len(b.runs()) != 0 {
			t.Fatal("host B has a run file: the test would not show following from another host")
		}
		select {
		case err := <-f.done:
			t.Fatalf("the follower ended while the run is held: %v\n%s%s", err, f.out.String(), f.errOut.String())
		case <-time.After(500 * time.Millisecond):
		}
		return cmd, run, f
	}

	cmd, run, f := startHeld()
	if out := f.out.String(); !strings.Contains(out, "log:      on host-a") || !strings.Contains(out, "create marker item-1") {
		t.Errorf("the follower's first lines:\n%s", out)
	}
	os.Remove(hold)
	// A step is printed when it finishes, while the run goes on.
	f.waitOut(t, "step item-1/mark: done")
	if cur, err := (&state.Store{Dir: a.stateDir}).Load(run.ID); err != nil || cur.Status != state.Running {
		t.Errorf("the run is no longer running when its first step is printed as done (%v): not followed as it goes", err)
	}
	if code := f.exit(t); code != 0 {
		t.Errorf("follower exit %d, want 0 (the run is done):\n%s\n%s", code, f.out.String(), f.errOut.String())
	}
	cmd.Wait()
	out := f.out.String()
	for _, want := range []string{"step item-2/mark: running", "step item-4/mark: done", "step finish: done", "--- run " + run.ID + ": done ---", "status:   done"} {
		if !strings.Contains(out, want) {
			t.Errorf("follow output lacks %q:\n%s", want, out)
		}
	}
	// The log lines the record carried, each once.
	if n := strings.Count(out, "INFO done step=item-3/mark"); n != 1 {
		t.Errorf("log line of item-3 printed %d times, want once:\n%s", n, out)
	}

	// A run that fails: the follower exits 1 saying so.
	os.WriteFile(filepath.Join(a.dir, "break-item-2"), nil, 0o600)
	cmd, run, f = startHeld()
	os.Remove(hold)
	if code := f.exit(t); code != 1 {
		t.Errorf("follower exit %d, want 1 (the run failed):\n%s\n%s", code, f.out.String(), f.errOut.String())
	}
	cmd.Wait()
	if !strings.Contains(f.out.String(), "--- run "+run.ID+": failed ---") || !strings.Contains(f.errOut.String(), "run "+run.ID+" ended failed: ") {
		t.Errorf("follow of a failed run:\n%s\nstderr:\n%s", f.out.String(), f.errOut.String())
	}
	os.Remove(filepath.Join(a.dir, "break-item-2"))

	// A run killed with SIGKILL: its record says running; the follower ends once its
	// Lease expires.
	cmd, run, f = startHeld()
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if code := f.exit(t); code != 1 {
		t.Errorf("follower exit %d, want 1 (the run's host is gone):\n%s\n%s", code, f.out.String(), f.errOut.String())
	}
	if !strings.Contains(f.out.String(), "--- run "+run.ID+": stopped (lease expired") {
		t.Errorf("follow of a killed run:\n%s\nstderr:\n%s", f.out.String(), f.errOut.String())
	}
}
