package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"example.com/cookbook/cookbooks/state"
)

// TestValuesConcurrentSetSaveRead runs a step that sets values from three goroutines
// (a roll-reboot batch) while a reader (the progress ticker, started by the plan) reads
// them: every Set saves the run, so the run's values are marshalled while the others
// write. Run with -race.
func TestValuesConcurrentSetSaveRead(t *testing.T) {
	store := &state.Store{Dir: t.TempDir()}
	run := &state.Run{ID: "r-race", Cookbook: "test", StartedAt: time.Now()}
	runner := &Runner{Store: store}
	planned := runner.Values(run) // what the plan (and its ticker) gets
	const workers, sets = 3, 20
	steps := []Step{{Name: "batch", Do: func(ctx context.Context, v *Values) error {
		if v != planned {
			t.Error("the step got another Values than the plan")
		}
		stop := make(chan struct{})
		read := make(chan struct{})
		go func() { // the progress ticker
			defer close(read)
			for {
				select {
				case <-stop:
					return
				default:
				}
				for w := range workers {
					_, _ = Key[int](fmt.Sprintf("node-%d/done", w)).Get(planned)
				}
			}
		}()
		errs := make([]error, workers)
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range sets {
					if err := Key[int](fmt.Sprintf("node-%d/done", w)).Set(v, i); err != nil {
						errs[w] = err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(stop)
		<-read
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		return nil
	}}}
	if err := runner.Run(context.Background(), run, steps); err != nil {
		t.Fatal(err)
	}
	saved, err := store.Load(run.ID)
	if err != nil {
		t.Fatal(err)
	}
	for w := range workers {
		k := fmt.Sprintf("node-%d/done", w)
		if got := string(saved.Values[k]); got != fmt.Sprint(sets-1) {
			t.Errorf("saved %s = %q, want %d", k, got, sets-1)
		}
	}
}

// TestRecordedValueOfWrongShape loads a run file whose value no longer decodes as its
// key's type (a later version changed the type): that is an error naming the key and
// the run, never "not set", which would make a resumed step act again.
func TestRecordedValueOfWrongShape(t *testing.T) {
	store := &state.Store{Dir: t.TempDir()}
	if err := os.MkdirAll(filepath.Dir(store.Path("r-shape")), 0o700); err != nil {
		t.Fatal(err)
	}
	file := `{"schema": 1, "id": "r-shape", "cookbook": "roll-reboot", "status": "interrupted", "startedAt": "2026-11-25T10:00:00Z",
	  "steps": [{"name": "plan", "status": "pending"}],
	  "values": {"roll/plan": {"batch": 1}, "worker-1/done": "yesterday"}}`
	if err := os.WriteFile(store.Path("r-shape"), []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	run, err := store.Load("r-shape")
	if err != nil {
		t.Fatal(err)
	}
	runner := &Runner{Store: store}
	v := runner.Values(run)

	tests := []struct {
		name    string
		lookup  func() (bool, error)
		wantErr string
	}{
		{"list recorded as an object", func() (bool, error) {
			_, ok, err := Key[[][]string]("roll/plan").Lookup(v)
			return ok, err
		}, `run r-shape: recorded value "roll/plan" does not decode as [][]string: json: cannot unmarshal object into Go value of type [][]string`},
		{"time recorded as a word", func() (bool, error) {
			_, ok, err := Key[time.Time]("worker-1/done").Lookup(v)
			return ok, err
		}, `run r-shape: recorded value "worker-1/done" does not decode as time.Time: parsing time "yesterday" as "2006-01-02T15:04:05Z07:00": cannot parse "yesterday" as "2006"`},
		{"not set", func() (bool, error) {
			_, ok, err := Key[int]("worker-2/done").Lookup(v)
			return !ok, err
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, err := tt.lookup()
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.wantErr {
				t.Errorf("error\n got  %s\n want %s", got, tt.wantErr)
			}
			if !ok {
				t.Error("a value that does not decode was reported as not set")
			}
		})
	}

	// Must and Get do not take it for a value not set either, and a step that uses it
	// fails the run with that error instead of acting again.
	if _, err := Key[[][]string]("roll/plan").Must(v); err == nil || !strings.Contains(err.Error(), `recorded value "roll/plan" does not decode`) {
		t.Errorf("Must = %v", err)
	}
	if _, ok := Key[[][]string]("roll/plan").Get(v); !ok {
		t.Error("Get reported a recorded value as not set")
	}
	replanned := false
	steps := []Step{{Name: "plan", Do: func(_ context.Context, v *Values) error {
		_, ok, err := Key[[][]string]("roll/plan").Lookup(v)
		if err != nil {
			return err
		}
		if !ok {
			replanned = true
		}
		return nil
	}}}
	err = runner.Run(context.Background(), run, steps)
	var se *StepError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), `run r-shape: recorded value "roll/plan" does not decode as [][]string`) {
		t.Errorf("Run = %v", err)
	}
	var te *json.UnmarshalTypeError
	if !errors.As(err, &te) {
		t.Errorf("the json error is not wrapped: %v", err)
	}
	if replanned {
		t.Error("the step re-planned")
	}
	saved, err := store.Load("r-shape")
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if err := json.Compact(&got, saved.Values["roll/plan"]); err != nil || got.String() != `{"batch":1}` {
		t.Errorf("the recorded value was changed to %s (%v)", saved.Values["roll/plan"], err)
	}
}

// TestValuesGroupCommit sets values from 50 goroutines at once (the nodes of a batch
// finishing a step) over a slow save: each Set returns only once a completed save holds
// its value, and the saves are far fewer than the Sets. Run with -race.
func TestValuesGroupCommit(t *testing.T) {
	var mu sync.Mutex
	var saves int
	durable := map[string]bool{} // what the last completed save wrote
	var v *Values
	data := map[string]json.RawMessage{}
	v = NewValues("r-group", data, func() error {
		snapshot := map[string]bool{}
		for k := range data { // called with the values' lock held
			snapshot[k] = true
		}
		time.Sleep(20 * time.Millisecond) // an fsync
		mu.Lock()
		saves++
		durable = snapshot
		mu.Unlock()
		return nil
	})
	const nodes = 50
	var wg sync.WaitGroup
	for i := 0; i < nodes; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("node-%d/done", i)
			if err := Key[bool](key).Set(v, true); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if !durable[key] {
				t.Errorf("Set of %s returned before a save held it", key)
			}
		}()
	}
	wg.Wait()
	if saves >= nodes/2 {
		t.Errorf("%d saves for %d values set at once; want a few (group commit)", saves, nodes)
	}
	t.Logf("%d values set at once, %d saves", nodes, saves)

	// A failed save fails the Set whose save it was; a later Set saves again.
	fail := errors.New("disk full")
	v2 := NewValues("r-fail", nil, func() error { return fail })
	if err := Key[int]("a").Set(v2, 1); !errors.Is(err, fail) {
		t.Errorf("Set over a failing save = %v, want %v", err, fail)
	}
}
