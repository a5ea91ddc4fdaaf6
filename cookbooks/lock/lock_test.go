package lock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func TestLockHeldAndTakenOver(t *testing.T) {
	fl := &Files{Dir: t.TempDir()}
	h1 := Holder{RunID: "run-1", User: "alice", Host: "cumin", PID: os.Getpid()}
	l1, prev, err := fl.Lock(context.Background(), "toolsbeta", h1)
	if err != nil || prev != nil {
		t.Fatalf("first lock: %v %v", prev, err)
	}
	if got := fl.Holder("toolsbeta"); got == nil || got.RunID != "run-1" {
		t.Errorf("Holder = %+v", got)
	}
	// A second open file description conflicts, as a second process would.
	_, _, err = fl.Lock(context.Background(), "toolsbeta", Holder{RunID: "run-2"})
	var held *HeldError
	if !errors.As(err, &held) || held.Holder.RunID != "run-1" {
		t.Fatalf("second lock: %v", err)
	}
	// Another cluster is independent.
	l3, _, err := fl.Lock(context.Background(), "tools", Holder{RunID: "run-3"})
	if err != nil {
		t.Fatal(err)
	}
	l3.Unlock()
	l1.Unlock()
	if got := fl.Holder("toolsbeta"); got != nil {
		t.Errorf("Holder after unlock = %+v", got)
	}
}

func TestLockOfDeadHolderIsTakenOver(t *testing.T) {
	fl := &Files{Dir: t.TempDir()}
	// What a killed run leaves: its holder record, with no flock held.
	os.WriteFile(fl.Dir+"/toolsbeta.lock", []byte(`{"runId":"run-dead","pid":999999}`), 0o600)
	if got := fl.Holder("toolsbeta"); got != nil {
		t.Errorf("a dead holder is reported as holding: %+v", got)
	}
	l, prev, err := fl.Lock(context.Background(), "toolsbeta", Holder{RunID: "run-new"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	if prev == nil || prev.RunID != "run-dead" {
		t.Errorf("previous holder = %+v, want run-dead", prev)
	}
}

// deadX is what an exclusive run killed with kill -9 leaves in <cluster>.lock: its record,
// with no flock held.
const deadX = `{"runId":"run-dead","cookbook":"roll-reboot-k8s-nodes","pid":999999}`

// TestStaleExclusiveRecordClearedByChunk: the first chunk that takes the lock after a
// killed exclusive run reports that run once and clears its record; later chunks report
// nothing, an exclusive run started beside them is refused naming a live chunk, and one
// started after them takes the lock with no previous holder.
func TestStaleExclusiveRecordClearedByChunk(t *testing.T) {
	ctx := context.Background()
	fl := &Files{Dir: t.TempDir()}
	os.WriteFile(filepath.Join(fl.Dir, "c1.lock"), []byte(deadX), 0o600)
	a, prev, err := fl.Lock(ctx, "c1", chunk("run-a", "worker-1"))
	if err != nil || prev == nil || prev.RunID != "run-dead" {
		t.Fatalf("first chunk: previous %+v, %v; want run-dead", prev, err)
	}
	b, prev, err := fl.Lock(ctx, "c1", chunk("run-b", "worker-2"))
	if err != nil || prev != nil {
		t.Fatalf("second chunk: previous %+v, %v; want none (run-dead was reported already)", prev, err)
	}
	_, _, err = fl.Lock(ctx, "c1", Holder{RunID: "run-y", Cookbook: "roll-reboot-k8s-nodes", PID: os.Getpid()})
	namesChunk(t, err)
	a.Unlock()
	b.Unlock()
	y, prev, err := fl.Lock(ctx, "c1", Holder{RunID: "run-y", PID: os.Getpid()})
	if err != nil || prev != nil {
		t.Fatalf("exclusive run after the chunks: previous %+v, %v", prev, err)
	}
	y.Unlock()
}

// TestExclusiveRefusalNamesLiveChunks: a stale record in <cluster>.lock (left by a chunk of
// an older cookbook, or being replaced) does not name the holder of a lock the chunks hold.
func TestExclusiveRefusalNamesLiveChunks(t *testing.T) {
	ctx := context.Background()
	fl := &Files{Dir: t.TempDir()}
	a, _, err := fl.Lock(ctx, "c1", chunk("run-a", "worker-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Unlock()
	os.WriteFile(filepath.Join(fl.Dir, "c1.lock"), []byte(deadX), 0o600)
	_, _, err = fl.Lock(ctx, "c1", Holder{RunID: "run-y", Cookbook: "roll-reboot-k8s-nodes", PID: os.Getpid()})
	namesChunk(t, err)
}

// namesChunk checks that err refuses an exclusive run naming a live chunk, not run-dead.
func namesChunk(t *testing.T, err error) {
	t.Helper()
	var held *HeldError
	if !errors.As(err, &held) || (held.Holder.RunID != "run-a" && held.Holder.RunID != "run-b") {
		t.Fatalf("exclusive run beside chunks: %v; want refused by run-a or run-b", err)
	}
	for _, w := range []string{"worker-", "a run that is not a chunk of it waits for it"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%q lacks %q", err, w)
		}
	}
	if strings.Contains(err.Error(), "run-dead") || strings.Contains(err.Error(), "999999") {
		t.Errorf("refusal names the dead run: %q", err)
	}
}

// TestHoldersProbeRefusesNobody: Holders (cookbook runs, the confirmation's pre-check)
// reading the lock in a loop makes no run fail to take a free lock, exclusive or chunk.
func TestHoldersProbeRefusesNobody(t *testing.T) {
	ctx := context.Background()
	fl := &Files{Dir: t.TempDir()}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				fl.Holders("c1")
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	failed := 0
	for i := 0; i < 1000; i++ {
		h := Holder{RunID: "run-x", Cookbook: "roll-reboot-k8s-nodes", PID: os.Getpid()}
		if i%2 == 1 {
			h = chunk("run-c", "worker-1")
		}
		l, _, err := fl.Lock(ctx, "c1", h)
		if err != nil {
			if failed++; failed <= 3 {
				t.Errorf("lock %d of a free lock: %v", i, err)
			}
			continue
		}
		if err := l.Unlock(); err != nil {
			t.Fatal(err)
		}
	}
	if failed > 0 {
		t.Errorf("%d of 1000 locks of a free lock failed", failed)
	}
}

// TestBusyLockWithoutHolder: a lock file flocked by a process that records no holder
// refuses a run plainly, with no empty holder in the message.
func TestBusyLockWithoutHolder(t *testing.T) {
	ctx := context.Background()
	fl := &Files{Dir: t.TempDir()}
	f, err := os.OpenFile(filepath.Join(fl.Dir, "c1.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	for _, h := range []Holder{{RunID: "run-y", PID: os.Getpid()}, chunk("run-c", "worker-1")} {
		_, _, err := fl.Lock(ctx, "c1", h)
		var held *HeldError
		if !errors.As(err, &held) {
			t.Fatalf("%s: %v; want a HeldError", h.RunID, err)
		}
		msg := err.Error()
		if strings.Contains(msg, "pid 0") || strings.Contains(msg, "run  (") || !strings.Contains(msg, "records no holder") || strings.Contains(msg, "\n") {
			t.Errorf("%s: %q", h.RunID, msg)
		}
	}
}
