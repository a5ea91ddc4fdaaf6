package pipeline

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"example.com/cookbook/cookbooks/state"
)

// TestValuesConcurrentSetSaveRead runs a step that sets values from three goroutines
// (a roll-reboot batch) while a reader (the progress ticker, started by the plan) reads
// them: every Set saves the run, so the run's values are marshalled while the others
// write. Run with -race.
func TestValuesConcurrentSetSaveRead(t *testing.T) {
	store := &state.Store{Dir: t.TempDir()}
	run := &state.Run{ID: "r-race"}
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
