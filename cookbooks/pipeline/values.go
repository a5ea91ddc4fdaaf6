package pipeline

import (
	"encoding/json"
	"fmt"
	"sync"
)

// Values are what steps hand on to later steps: typed, and saved in the run's state file
// as soon as they are set, so they survive the process.
type Values struct {
	mu    sync.Mutex
	runID string
	data  map[string]json.RawMessage
	save  func() error // persists the run; nil in dry-run and in tests
}

// NewValues returns values backed by data (a run's recorded values), calling save after
// every Set. It is what the runner uses; tests may use it directly.
func NewValues(runID string, data map[string]json.RawMessage, save func() error) *Values {
	if data == nil {
		data = map[string]json.RawMessage{}
	}
	return &Values{runID: runID, data: data, save: save}
}

// RunID returns the id of the run the values belong to.
func (v *Values) RunID() string { return v.runID }

// Key names a value of type T in a run's state. Keys are documented where they are
// declared and are stable: they are read back from state files by later versions.
type Key[T any] string

// Get returns the value and whether it was set.
func (k Key[T]) Get(v *Values) (T, bool) {
	var out T
	v.mu.Lock()
	raw, ok := v.data[string(k)]
	v.mu.Unlock()
	if !ok {
		return out, false
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return out, false
	}
	return out, true
}

// Must returns the value, or an error naming the key when no earlier step set it.
func (k Key[T]) Must(v *Values) (T, error) {
	out, ok := k.Get(v)
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
	v.mu.Lock()
	v.data[string(k)] = raw
	v.mu.Unlock()
	if v.save != nil {
		if err := v.save(); err != nil {
			return fmt.Errorf("record %s: %w", string(k), err)
		}
	}
	return nil
}
