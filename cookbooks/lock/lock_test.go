package lock

import (
	"context"
	"errors"
	"os"
	"testing"
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
