package main

import (
	"context"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"example.com/cookbook/lab"
	"example.com/cookbook/lab/cloud"
	"example.com/cookbook/lab/stack"
)

// serverActions is the route of Nova's server actions (reboot, os-stop) in the lab
// cloud's count of writes.
const serverActions = "POST /compute/v2.1/servers/{id}/action"

// bootIDs watches the node and returns a function giving the boot ids its Node has
// reported, in order, each once (the first is the one it had when the watch started).
func bootIDs(t *testing.T, s *stack.Stack, node string) func() []string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	wi, err := s.CP.Client.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", node).String()})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	go func() {
		for ev := range wi.ResultChan() {
			n, ok := ev.Object.(*corev1.Node)
			if !ok {
				continue
			}
			mu.Lock()
			if id := n.Status.NodeInfo.BootID; len(seen) == 0 || seen[len(seen)-1] != id {
				seen = append(seen, id)
			}
			mu.Unlock()
		}
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
}

// killAtHardReboot starts the cookbook with args and kills it (SIGKILL) as soon as the lab
// cloud has counted a server action more than before; it returns the id of the run left
// unfinished.
func killAtHardReboot(t *testing.T, w *world, s *stack.Stack, args ...string) string {
	t.Helper()
	before := s.Cloud.Writes()[serverActions]
	cmd := w.command(args...)
	var out strings.Builder
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(2 * time.Minute)
	for s.Cloud.Writes()[serverActions] == before {
		select {
		case err := <-done:
			t.Fatalf("the run ended (%v) before the cloud saw a hard reboot:\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-done
			t.Fatalf("no hard reboot within 2m:\n%s", out.String())
		}
		time.Sleep(time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
	for _, r := range w.runs() {
		if r.Status != "done" && r.Status != "abandoned" {
			return r.ID
		}
	}
	t.Fatalf("no unfinished run after the kill:\n%s", out.String())
	return ""
}

// TestRebootStuckWorkersResumeHardReboot kills reboot-stuck-workers (SIGKILL) right after
// the lab cloud received the hard reboot of a powered-off worker, SSH being unable to reach
// it, and resumes it while the VM is still down (it stays down 12 s): a rehearsal of the
// resume sends nothing and says it would wait; the resume waits for the node instead of
// rebooting it again: exit 0, one reboot action in the cloud, the Node's boot id changed
// once, nothing left cordoned. A run killed as a reachable worker's soft reboot arrives,
// resumed while the VM is down, waits for it: no hard reboot through the cloud, one
// systemctl reboot. Then a hard reboot that never reached Nova (the run killed
// while the request was held by the cloud; the server stays SHUTOFF) is sent again by the
// resume once the node has not come back within --reboot-timeout, and said so.
func TestRebootStuckWorkersResumeHardReboot(t *testing.T) {
	w, s := stackWorldOf(t, stack.Options{Controls: 1, Workers: 2, NFSWorkers: -1, RebootDownTime: 12 * time.Second})
	ctx := context.Background()
	dead, fine := s.Prefix+"-worker-1", s.Prefix+"-worker-2"
	powerOff := func() {
		t.Helper()
		if err := s.PowerOff(ctx, dead); err != nil {
			t.Fatal(err)
		}
		if err := s.CP.WaitNodeReady(ctx, dead, false, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second) // NotReady for longer than --not-ready-for
	}
	// wantEnd: the run is done, the worker rebooted Ready, and no node left cordoned.
	wantEnd := func(id string) {
		t.Helper()
		for _, r := range w.runs() {
			if r.ID == id && r.Status != "done" {
				t.Errorf("run %s is %s after the resume", id, r.Status)
			}
		}
		if n := nodeOf(t, s, dead); n == nil || !lab.IsReady(n) {
			t.Errorf("%s not Ready after the resume", dead)
		}
		nodes, err := s.CP.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes.Items {
			if n.Spec.Unschedulable {
				t.Errorf("node %s left cordoned", n.Name)
			}
		}
		if srv := serverOf(t, s, dead); srv.Status != "ACTIVE" {
			t.Errorf("server %s is %s after the resume", dead, srv.Status)
		}
		for _, c := range commandsOn(s, dead) {
			if strings.HasSuffix(c, "systemctl reboot") {
				t.Errorf("%s was also rebooted over SSH: %v", dead, commandsOn(s, dead))
			}
		}
	}

	t.Run("killed after the cloud saw the hard reboot", func(t *testing.T) {
		powerOff()
		fineBoot := nodeOf(t, s, fine).Status.NodeInfo.BootID
		seen := bootIDs(t, s, dead)
		args := []string{"--yes", "reboot-stuck-workers", "--cluster-name", "toolsbeta", "--not-ready-for", "1s",
			"--force", "--delete-emptydir-data", "--skip-wait-for-delete-timeout", "1s", "--reboot-timeout", "1m"}
		actions := s.Cloud.Writes()[serverActions]
		id := killAtHardReboot(t, w, s, args...)

		// The rehearsal of the resume: nothing sent, the wait said. The lab takes the VM
		// down for the reboot the cloud received (its kubelet's last writes to the Node)
		// before the server is ACTIVE again; the rehearsal is marked from then.
		for deadline := time.Now().Add(30 * time.Second); serverOf(t, s, dead).Status != "ACTIVE"; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("server %s not ACTIVE 30s after its hard reboot", dead)
			}
		}
		time.Sleep(time.Second)
		before, since := s.Cloud.TotalWrites(), time.Now()
		r := w.run("--dry-run", "resume", id)
		wantCode(t, r, 0)
		if strings.Contains(r.stderr, "would hard reboot server") || !strings.Contains(r.stderr, "hard reboot sent before the run stopped; the resume would wait for the node") {
			t.Errorf("the rehearsal would send the hard reboot again or does not say it would wait:\n%s", r.stderr)
		}
		time.Sleep(time.Second)
		writes, err := s.CP.WriteRequests(ctx, since, "cookbook")
		if err != nil {
			t.Fatal(err)
		}
		var named []string
		for _, e := range writes {
			named = append(named, e.Verb+" "+e.RequestURI)
		}
		if len(named) != 0 || s.Cloud.TotalWrites() != before {
			t.Errorf("the rehearsal made API writes %v, %d cloud writes", named, s.Cloud.TotalWrites()-before)
		}

		r = w.run("--yes", "resume", id)
		wantCode(t, r, 0)
		if !strings.Contains(r.stderr, "hard reboot sent before the run stopped; waiting for the node") {
			t.Errorf("the resume did not find the node still down and wait for it (the lab's VM came back too early?):\n%s", r.stderr)
		}
		if got := s.Cloud.Writes()[serverActions] - actions; got != 1 {
			t.Errorf("%d reboot actions for %s, want 1:\n%s", got, dead, r.stderr)
		}
		if ids := seen(); len(ids) != 2 {
			t.Errorf("boot ids of %s: %v, want the old one and one new", dead, ids)
		}
		if got := nodeOf(t, s, fine).Status.NodeInfo.BootID; got != fineBoot {
			t.Errorf("%s, not stuck, was rebooted", fine)
		}
		wantEnd(id)
	})

	t.Run("killed during a soft reboot", func(t *testing.T) {
		// The other worker: kubelet down, SSH answering: rebooted over SSH. The run is
		// killed as systemctl reboot arrives (the reboot runs) and resumed while the VM
		// is down: SSH not answering a booting node is no reason for a hard reboot.
		if err := s.CP.SetNodeNotReady(ctx, fine); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		seen := bootIDs(t, s, fine)
		softBefore := 0
		for _, c := range commandsOn(s, fine) {
			if strings.HasSuffix(c, "systemctl reboot") {
				softBefore++
			}
		}
		actions := s.Cloud.Writes()[serverActions]
		cmd := w.command("--yes", "reboot-stuck-workers", "--cluster-name", "toolsbeta", "--not-ready-for", "1s",
			"--force", "--delete-emptydir-data", "--skip-wait-for-delete-timeout", "1s", "--reboot-timeout", "1m")
		var out strings.Builder
		cmd.Stderr = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		killed := make(chan struct{})
		s.Fleet.BeforeCommand(func(v string, a []string) bool {
			if v != fine || !strings.HasSuffix(strings.Join(a, " "), "systemctl reboot") {
				return false
			}
			s.Fleet.BeforeCommand(nil)
			cmd.Process.Signal(syscall.SIGKILL)
			<-killed // the process is gone before the VM reboots
			return false
		})
		t.Cleanup(func() { s.Fleet.BeforeCommand(nil) })
		select {
		case <-done:
			close(killed)
		case <-time.After(2 * time.Minute):
			cmd.Process.Kill()
			<-done
			close(killed)
			t.Fatalf("the run neither rebooted nor ended:\n%s", out.String())
		}
		id := ""
		for _, r := range w.runs() {
			if r.Status != "done" && r.Status != "abandoned" {
				id = r.ID
			}
		}
		if id == "" {
			t.Fatalf("no unfinished run after the kill:\n%s", out.String())
		}
		r := w.run("--yes", "resume", id)
		wantCode(t, r, 0)
		if got := s.Cloud.Writes()[serverActions] - actions; got != 0 {
			t.Errorf("%d cloud reboot actions for %s, rebooted over SSH already:\n%s", got, fine, r.stderr)
		}
		soft := -softBefore
		for _, c := range commandsOn(s, fine) {
			if strings.HasSuffix(c, "systemctl reboot") {
				soft++
			}
		}
		if soft != 1 {
			t.Errorf("%s ran systemctl reboot %d times, want 1", fine, soft)
		}
		if ids := seen(); len(ids) != 2 {
			t.Errorf("boot ids of %s: %v, want the old one and one new", fine, ids)
		}
		if n := nodeOf(t, s, fine); n == nil || !lab.IsReady(n) || n.Spec.Unschedulable {
			t.Errorf("%s not Ready or still cordoned after the resume", fine)
		}
	})

	t.Run("killed before the hard reboot reached Nova", func(t *testing.T) {
		powerOff()
		seen := bootIDs(t, s, dead)
		args := []string{"--yes", "reboot-stuck-workers", "--cluster-name", "toolsbeta", "--not-ready-for", "1s",
			"--force", "--delete-emptydir-data", "--skip-wait-for-delete-timeout", "1s", "--reboot-timeout", "20s"}
		// The cloud holds the action 5 s before handling it: the kill lands in between
		// and the request, cut, is never acted on.
		s.Cloud.SetFaults(cloud.Faults{Rules: []cloud.FaultRule{{Method: "POST", PathPrefix: "/compute/v2.1/servers/", LatencyMillis: 5000}}})
		actions := s.Cloud.Writes()[serverActions]
		id := killAtHardReboot(t, w, s, args...)
		s.Cloud.SetFaults(cloud.Faults{})
		time.Sleep(5 * time.Second) // the held request would have been handled by now
		if srv := serverOf(t, s, dead); srv.Status != "SHUTOFF" {
			t.Fatalf("server %s is %s: the cut request was acted on", dead, srv.Status)
		}

		start := time.Now()
		r := w.run("--yes", "resume", id)
		wantCode(t, r, 0)
		if took := time.Since(start); took < 20*time.Second {
			t.Errorf("the resume took %s: it did not wait --reboot-timeout (20s) before sending the reboot again", took.Round(time.Second))
		}
		if !strings.Contains(r.stderr, "node not back within the reboot timeout after the hard reboot sent before the run stopped; hard rebooting it again") {
			t.Errorf("the resume does not say it sends the hard reboot again:\n%s", r.stderr)
		}
		if got := s.Cloud.Writes()[serverActions] - actions; got != 2 {
			t.Errorf("%d reboot actions for %s (the cut one counted), want 2", got, dead)
		}
		if ids := seen(); len(ids) != 2 {
			t.Errorf("boot ids of %s: %v, want the old one and one new", dead, ids)
		}
		wantEnd(id)
	})
}
