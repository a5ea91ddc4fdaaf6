package lock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"example.com/cookbook/lab"
)

var cp *lab.ControlPlane

func TestMain(m *testing.M) { os.Exit(lab.RunTests(m, &cp)) }

// leases returns the Leases of host for the Lease name in the lab.
func leases(t *testing.T, name, host string, d time.Duration) *Leases {
	t.Helper()
	lab.Need(t, cp)
	c, err := kubernetes.NewForConfig(cp.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	return &Leases{Client: c, Namespace: "kube-system", Name: name, Duration: d, RenewEvery: d / 4, Host: host,
		Alive: func(int) bool { return true }}
}

// kill stops a lock's renewal without releasing it: what kill -9 leaves.
func kill(l Lock) {
	ll := l.(*LeaseLock)
	ll.once.Do(func() { close(ll.stop) })
	<-ll.done
}

func TestLeaseHeldReleasedAndExpired(t *testing.T) {
	ctx := context.Background()
	a := leases(t, "t-held", "host-a", 2*time.Second)
	b := leases(t, "t-held", "host-b", 2*time.Second)
	h1 := Holder{RunID: "run-1", Cookbook: "toy", User: "alice", Host: "host-a", PID: 4242}
	if err := b.Held(ctx, "lab1", Holder{RunID: "run-2", Host: "host-b"}); err != nil {
		t.Fatalf("Held before any Lease: %v", err)
	}
	l1, prev, err := a.Lock(ctx, "lab1", h1)
	if err != nil || prev != nil {
		t.Fatalf("first lock: %v %v", prev, err)
	}
	// Renewed while held: the other host is refused past the lease's duration.
	time.Sleep(3 * time.Second)
	_, _, err = b.Lock(ctx, "lab1", Holder{RunID: "run-2", Host: "host-b"})
	var held *HeldError
	if !errors.As(err, &held) || held.Holder.RunID != "run-1" || held.Holder.Host != "host-a" || held.Lease != "kube-system/t-held" {
		t.Fatalf("second lock: %v", err)
	}
	for _, want := range []string{"run-1", "toy", "alice", "host-a", "pid 4242", "last renewed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	if err := l1.(*LeaseLock).Err(); err != nil {
		t.Fatalf("held lock reports %v", err)
	}
	// Held says the same, reading only.
	if err := b.Held(ctx, "lab1", Holder{RunID: "run-2", Host: "host-b"}); !errors.As(err, &held) || held.Holder.RunID != "run-1" {
		t.Fatalf("Held of a live lease: %v", err)
	}
	// Released: taken at once, with no previous holder.
	if err := l1.Unlock(); err != nil {
		t.Fatal(err)
	}
	if h, _, _, _ := a.Holder(ctx); h != nil {
		t.Errorf("holder after unlock: %+v", h)
	}
	if err := b.Held(ctx, "lab1", Holder{RunID: "run-2", Host: "host-b"}); err != nil {
		t.Errorf("Held of a released lease: %v", err)
	}
	l2, prev, err := b.Lock(ctx, "lab1", Holder{RunID: "run-2", Host: "host-b"})
	if err != nil || prev != nil {
		t.Fatalf("lock after release: %v %v", prev, err)
	}
	// Not renewed (its process killed): refused until the lease expires, then taken over.
	kill(l2)
	if _, _, err := a.Lock(ctx, "lab1", Holder{RunID: "run-3", Host: "host-a"}); !errors.As(err, &held) {
		t.Fatalf("lock of a fresh lease whose holder died elsewhere: %v", err)
	}
	_, renewed, _, _ := a.Holder(ctx)
	time.Sleep(time.Until(renewed.Add(2*time.Second + 100*time.Millisecond)))
	l3, prev, err := a.Lock(ctx, "lab1", Holder{RunID: "run-3", Host: "host-a"})
	if err != nil || prev == nil || prev.RunID != "run-2" {
		t.Fatalf("takeover of an expired lease: previous %+v, %v", prev, err)
	}
	l3.Unlock()
}

// TestLeaseOfDeadProcessOnThisHost: a holder that ran on this host in a process that is
// gone is taken over at once (a resume right after kill -9 does not wait).
func TestLeaseOfDeadProcessOnThisHost(t *testing.T) {
	ctx := context.Background()
	a := leases(t, "t-dead", "host-a", time.Minute)
	l, _, err := a.Lock(ctx, "lab1", Holder{RunID: "run-1", Host: "host-a", PID: 999999})
	if err != nil {
		t.Fatal(err)
	}
	kill(l)
	a.Alive = nil // kill(999999, 0): no such process
	l2, prev, err := a.Lock(ctx, "lab1", Holder{RunID: "run-2", Host: "host-a", PID: os.Getpid()})
	if err != nil || prev == nil || prev.RunID != "run-1" {
		t.Fatalf("takeover: %+v %v", prev, err)
	}
	// Another host's view of the same holder: live, refused.
	b := leases(t, "t-dead", "host-b", time.Minute)
	b.Alive = nil
	if _, _, err := b.Lock(ctx, "lab1", Holder{RunID: "run-3", Host: "host-b"}); err == nil {
		t.Fatal("another host took a live lease")
	}
	l2.Unlock()
}

// TestLeaseStolen: a Lease changed behind the holder's back is reported lost.
func TestLeaseStolen(t *testing.T) {
	ctx := context.Background()
	a := leases(t, "t-stolen", "host-a", 2*time.Second)
	l, _, err := a.Lock(ctx, "lab1", Holder{RunID: "run-1", Host: "host-a"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	api := a.Client.CoordinationV1().Leases("kube-system")
	cur, err := api.Get(ctx, "t-stolen", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Spec.HolderIdentity = ptr.To("thief")
	cur.Annotations[HolderAnnotation] = `{"runId":"run-thief","host":"host-x"}`
	if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for l.(*LeaseLock).Err() == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	err = l.(*LeaseLock).Err()
	if !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), "run-thief") {
		t.Fatalf("Err = %v", err)
	}
	// Unlock leaves the thief's Lease alone.
	l.Unlock()
	if h, _, _, _ := a.Holder(ctx); h == nil || h.RunID != "run-thief" {
		t.Errorf("holder after the loser's unlock: %+v", h)
	}
}

// TestLeaseChunksStartAndEndTogether: chunks starting at once while the others renew fast
// all take the shared Lease (a conflict is another holder's progress, not a refusal), and
// all release it at once, leaving no entry behind; three times.
func TestLeaseChunksStartAndEndTogether(t *testing.T) {
	ctx := context.Background()
	const n = 8
	ls := leases(t, "t-together", "host-a", 10*time.Second)
	ls.RenewEvery = 100 * time.Millisecond
	if err := ls.Client.CoordinationV1().Leases("kube-system").Delete(ctx, "t-together", metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	for round := 1; round <= 3; round++ {
		locks := make([]Lock, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l, _, err := ls.Lock(ctx, "c1", chunk(fmt.Sprintf("run-%d-%d", round, i), fmt.Sprintf("worker-%d", i)))
				if err != nil {
					t.Errorf("round %d, chunk %d: %v", round, i, err)
					return
				}
				locks[i] = l
			}()
		}
		wg.Wait()
		if all, err := ls.Holders(ctx); err != nil || len(all) != n && !t.Failed() {
			t.Errorf("round %d: %d holders %v, want %d", round, len(all), err, n)
		}
		time.Sleep(300 * time.Millisecond) // each renews
		for i, l := range locks {
			if l == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := l.Unlock(); err != nil {
					t.Errorf("round %d, unlock of chunk %d: %v", round, i, err)
				}
			}()
		}
		wg.Wait()
		if all, err := ls.Holders(ctx); err != nil || len(all) != 0 {
			t.Fatalf("round %d: holders after every unlock = %+v %v", round, all, err)
		}
	}
}

// TestLeaseHoldersProcessGone: a holder whose process is gone from this host is not a live
// holder to this host's reader (its Lease entry has not expired yet); another host, which
// cannot see the process, still counts it until the entry expires.
func TestLeaseHoldersProcessGone(t *testing.T) {
	ctx := context.Background()
	a := leases(t, "t-gone", "host-a", time.Minute)
	l, _, err := a.Lock(ctx, "lab1", Holder{RunID: "run-dead", Host: "host-a", PID: 4243, Claim: &Claim{Job: "j", Nodes: []string{"n1"}}})
	if err != nil {
		t.Fatal(err)
	}
	kill(l)
	t.Cleanup(func() { l.Unlock() })
	here := leases(t, "t-gone", "host-a", time.Minute)
	here.Alive = func(pid int) bool { return pid != 4243 }
	there := leases(t, "t-gone", "host-b", time.Minute)
	for _, c := range []struct {
		who  string
		ls   *Leases
		live bool
	}{{"this host", here, false}, {"another host", there, true}} {
		all, err := c.ls.Holders(ctx)
		if err != nil || len(all) != 1 || all[0].Holder.RunID != "run-dead" || all[0].Live != c.live {
			t.Errorf("%s reads the holders %+v (%v), want run-dead live %v", c.who, all, err, c.live)
		}
	}
}
