package lock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const job = "upgrade-k8s-cluster of workers to v1.37.1"

func chunk(run string, nodes ...string) Holder {
	return Holder{RunID: run, Cookbook: "upgrade-k8s-cluster", User: "alice", Host: "host-a", PID: os.Getpid(), Claim: NewClaim(job, nodes)}
}

// refused checks that err is a one-line HeldError naming the run other and every word
// of want.
func refused(t *testing.T, err error, other string, want ...string) {
	t.Helper()
	var held *HeldError
	if !errors.As(err, &held) || held.Holder.RunID != other {
		t.Fatalf("want refused by %s, got %v", other, err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error of more than one line: %q", err)
	}
	for _, w := range append(want, other) {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%q lacks %q", err, w)
		}
	}
}

// claimsScenario is the same test of the shared lock for both Lockers: chunks of one job
// on disjoint nodes share; overlapping nodes, another job, or a run without a claim are
// refused; an exclusive holder refuses chunks.
func claimsScenario(t *testing.T, lk Locker, holders func() []Holder, held func(Holder) error) {
	ctx := context.Background()
	a, _, err := lk.Lock(ctx, "c1", chunk("run-a", "worker-1", "worker-2"))
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := lk.Lock(ctx, "c1", chunk("run-b", "worker-3", "worker-4"))
	if err != nil {
		t.Fatalf("disjoint chunk of the same job: %v", err)
	}
	if got := holders(); len(got) != 2 {
		t.Errorf("holders = %+v, want run-a and run-b", got)
	}
	// Held, reading only, says what Lock would.
	if err := held(chunk("run-c", "worker-5")); err != nil {
		t.Errorf("Held of a disjoint chunk: %v", err)
	}
	refused(t, held(chunk("run-c", "worker-2", "worker-5")), "run-a", "worker-2")
	_, _, err = lk.Lock(ctx, "c1", chunk("run-c", "worker-2", "worker-5"))
	refused(t, err, "run-a", "worker-2", "that this run would take too")
	var he *HeldError
	if errors.As(err, &he) && strings.Join(he.Shared, ",") != "worker-2" {
		t.Errorf("shared = %v", he.Shared)
	}
	other := chunk("run-d", "worker-6")
	other.Claim.Job = "upgrade-k8s-cluster of workers to v1.37.2"
	_, _, err = lk.Lock(ctx, "c1", other)
	refused(t, err, "run-a", "v1.37.1", "v1.37.2", "only chunks of the same job")
	_, _, err = lk.Lock(ctx, "c1", Holder{RunID: "run-e", Cookbook: "roll-reboot-k8s-nodes", Host: "host-a", PID: os.Getpid()})
	var h *HeldError
	if !errors.As(err, &h) || (h.Holder.RunID != "run-a" && h.Holder.RunID != "run-b") {
		t.Fatalf("exclusive run beside chunks: %v", err)
	}
	// run-a done: run-c no longer overlaps anyone.
	if err := a.Unlock(); err != nil {
		t.Fatal(err)
	}
	c, _, err := lk.Lock(ctx, "c1", chunk("run-c", "worker-2", "worker-5"))
	if err != nil {
		t.Fatalf("after run-a's release: %v", err)
	}
	b.Unlock()
	c.Unlock()
	if got := holders(); len(got) != 0 {
		t.Errorf("holders after every release = %+v", got)
	}
	// An exclusive holder refuses a chunk.
	x, _, err := lk.Lock(ctx, "c1", Holder{RunID: "run-x", Cookbook: "roll-reboot-k8s-nodes", Host: "host-a", PID: os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = lk.Lock(ctx, "c1", chunk("run-f", "worker-9"))
	refused(t, err, "run-x")
	x.Unlock()
}

// disjoint fails the test when two of the claims overlap.
func disjoint(t *testing.T, hs []Holder) {
	t.Helper()
	seen := map[string]string{}
	for _, h := range hs {
		for _, n := range h.Claim.Nodes {
			if o, ok := seen[n]; ok {
				t.Errorf("node %s held by %s and %s at once", n, o, h.RunID)
			}
			seen[n] = h.RunID
		}
	}
}

// race takes overlapping claims at once, several times: the admitted ones are disjoint.
func race(t *testing.T, lk Locker, cluster string) {
	sets := [][]string{{"w1", "w2"}, {"w2", "w3"}, {"w3", "w4"}, {"w5"}, {"w1", "w5"}}
	for round := 0; round < 3; round++ {
		var mu sync.Mutex
		var won []Holder
		var locks []Lock
		var wg sync.WaitGroup
		for i, nodes := range sets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				h := chunk("run-"+string(rune('a'+i)), nodes...)
				l, _, err := lk.Lock(context.Background(), cluster, h)
				var held *HeldError
				if err != nil && !errors.As(err, &held) {
					t.Error(err)
				}
				if err == nil {
					mu.Lock()
					won, locks = append(won, h), append(locks, l)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if len(won) == 0 {
			t.Fatal("no claim admitted")
		}
		disjoint(t, won)
		for _, l := range locks {
			l.Unlock()
		}
	}
}

func TestFilesClaims(t *testing.T) {
	fl := &Files{Dir: t.TempDir()}
	claimsScenario(t, fl, func() []Holder { return fl.Holders("c1") }, func(h Holder) error { return fl.Held("c1", h) })
	race(t, fl, "c2")
	// A chunk whose process died left its record: swept, and reported as taken over.
	os.MkdirAll(filepath.Join(fl.Dir, "c3.claims"), 0o700)
	dead := `{"runId":"run-dead","pid":999999,"claim":{"job":"` + job + `","nodes":["worker-1"]}}`
	os.WriteFile(filepath.Join(fl.Dir, "c3.claims", "run-dead.999999"), []byte(dead), 0o600)
	if got := fl.Holders("c3"); len(got) != 0 {
		t.Errorf("a dead chunk is reported as holding: %+v", got)
	}
	l, prev, err := fl.Lock(context.Background(), "c3", chunk("run-dead", "worker-1"))
	if err != nil || prev == nil || prev.RunID != "run-dead" {
		t.Fatalf("resume of a dead chunk: %+v %v", prev, err)
	}
	l.Unlock()
	if ents, _ := os.ReadDir(filepath.Join(fl.Dir, "c3.claims")); len(ents) != 0 {
		t.Errorf("records left: %v", ents)
	}
}

func TestLeaseClaims(t *testing.T) {
	a := leases(t, "t-claims", "host-a", 2*time.Second)
	claimsScenario(t, a, func() []Holder {
		all, err := a.Holders(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var out []Holder
		for _, e := range all {
			out = append(out, e.Holder)
		}
		return out
	}, func(h Holder) error { return a.Held(context.Background(), "c1", h) })
	race(t, leases(t, "t-claims-race", "host-a", 10*time.Second), "c2")
}

// TestLeaseClaimExpires: a chunk killed -9 keeps its nodes until its entry expires,
// while the other chunk keeps renewing its own; a resume of the dead chunk (same run,
// new process) takes the same claim back at once on its host.
func TestLeaseClaimExpires(t *testing.T) {
	ctx := context.Background()
	a := leases(t, "t-claim-exp", "host-a", 2*time.Second)
	b := leases(t, "t-claim-exp", "host-b", 2*time.Second)
	la, _, err := a.Lock(ctx, "c1", chunk("run-a", "worker-1"))
	if err != nil {
		t.Fatal(err)
	}
	hb := chunk("run-b", "worker-2")
	hb.Host = "host-b"
	lb, _, err := b.Lock(ctx, "c1", hb)
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Unlock()
	kill(la)
	hc := chunk("run-c", "worker-1")
	hc.Host = "host-b"
	_, _, err = b.Lock(ctx, "c1", hc)
	refused(t, err, "run-a", "worker-1")
	time.Sleep(3 * time.Second)
	if err := lb.(*LeaseLock).Err(); err != nil {
		t.Fatalf("the live chunk lost its hold: %v", err)
	}
	// Expired: the dead chunk's resume on its host takes its claim back.
	ra := chunk("run-a", "worker-1")
	ra.PID = os.Getpid() + 1
	l2, prev, err := a.Lock(ctx, "c1", ra)
	if err != nil || prev == nil || prev.RunID != "run-a" {
		t.Fatalf("resume: %+v %v", prev, err)
	}
	all, _ := a.Holders(ctx)
	if len(all) != 2 || !all[0].Live || !all[1].Live {
		t.Errorf("holders = %+v", all)
	}
	l2.Unlock()
}
