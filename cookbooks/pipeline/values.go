package pipeline

import (
	"encoding/json"
	"fmt"
	"sync"
)

// Values are what steps hand on to later steps: typed, and saved in the run's state file
// as soon as they are set, so they survive the process.
//
// A run has one Values (Runner.Values), shared by its steps, the goroutines they start
// and readers such as a progress ticker. Its lock guards the data and every save of the
// run, so that the run is never serialised while a value is written.
type Values struct {
	mu    sync.Mutex
	runID string
	data  map[string]json.RawMessage
	save  func() error // persists the run, called with mu held; nil in dry-run and in tests

	saveMu sync.Mutex // one save at a time; taken before mu
	gen    uint64     // changes made so far (under mu)
	saved  uint64     // the last change a completed save covers (under mu)
}

// NewValues returns values backed by data (a run's recorded values), calling save after
// every Set with the values' lock held (save must not use the values). A run's steps get
// the runner's Values (Runner.Values); tests and read-only uses may call NewValues, but
// never over a map that another Values holds.
func NewValues(runID string, data map[string]json.RawMessage, save func() error) *Values {
	if data == nil {
		data = map[string]json.RawMessage{}
	}
	return &Values{runID: runID, data: data, save: save}
}

// RunID returns the id of the run the values belong to.
func (v *Values) RunID() string { return v.runID }

// update runs f (if not nil) under the values' lock and returns once a save of the run
// that includes the change has completed. Saves are group commits: when the steps of many
// nodes set values at once, the changes made while one save runs are covered by the next
// one, so fifty nodes finishing a step cost a few saves, not fifty.
func (v *Values) update(f func()) error {
	v.mu.Lock()
	if f != nil {
		f()
	}
	v.gen++
	mine := v.gen
	v.mu.Unlock()
	if v.save == nil {
		return nil
	}
	v.saveMu.Lock()
	defer v.saveMu.Unlock()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.saved >= mine {
		return nil // a save that started after the change covered it
	}
	covers := v.gen
	if err := v.save(); err != nil {
		return err
	}
	v.saved = covers
	return nil
}

// Key names a value of type T in a run's state. Keys are documented where they are
// declared and are stable: they are read back from state files by later versions.
type Key[T any] string

// Lookup returns the value and whether it was recorded. A recorded value that does not
// decode as T (its type changed) is an error naming the key and the run, reported with
// ok true: it is never mistaken for a value not set.
func (k Key[T]) Lookup(v *Values) (val T, ok bool, err error) {
	v.mu.Lock()
	raw, ok := v.data[string(k)]
	v.mu.Unlock()
	if !ok {
		return val, false, nil
	}
	if err := json.Unmarshal(raw, &val); err != nil {
		var zero T
		return zero, true, fmt.Errorf("run %s: recorded value %q does not decode as %T: %w", v.runID, string(k), zero, err)
	}
	return val, true, nil
}

// Get returns the value and whether it was recorded, for descriptions and progress
// lines: a recorded value that does not decode reads as T's zero value, reported as
// recorded. Steps that act on whether a value is set use Lookup or Must.
func (k Key[T]) Get(v *Values) (T, bool) {
	val, ok, _ := k.Lookup(v)
	return val, ok
}

// Must returns the value, or an error naming the key when no earlier step set it or when
// it does not decode.
func (k Key[T]) Must(v *Values) (T, error) {
	out, ok, err := k.Lookup(v)
	if err != nil {
		return out, err
	}
	if !ok {
		return out, fmt.Errorf("value %q was not recorded by an earlier step", string(k))
	}
	return out, nil
}

// Set records the value and saves the run state before returning, so that a value set
// just before a long wait (a new server's id) is never lost.
func (k Key[T]) Set(v *Values, val T) error {
	raw, err := json.Marshal(val)
	if err != nil {
		return fmt.Errorf("record %s: %w", string(k), err)
	}
	if err := v.update(func() { v.data[string(k)] = raw }); err != nil {
		return fmt.Errorf("record %s: %w", string(k), err)
	}
	return nil
}
