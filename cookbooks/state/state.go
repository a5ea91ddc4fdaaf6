// Package state records cookbook runs: one JSON file per run, rewritten atomically after
// every step change, so that a run killed at any moment can be resumed from its file.
package state

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"example.com/cookbook/filekind"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"example.com/cookbook/atomicfile"
)

// SchemaVersion is the version of the run file format this build reads and writes.
const SchemaVersion = 1

// Status is the state of a run or of one of its steps.
type Status string

// Statuses of runs and steps.
const (
	Pending     Status = "pending"     // step not started yet
	Running     Status = "running"     // in progress (or its process died: see Run.Holder)
	Done        Status = "done"        // finished successfully
	Skipped     Status = "skipped"     // step skipped (by itself or by the operator)
	Failed      Status = "failed"      // stopped on an error; resumable
	Interrupted Status = "interrupted" // stopped by a signal; resumable
	Paused      Status = "paused"      // stopped on purpose after a step (a canary); resumable
	Abandoned   Status = "abandoned"   // given up by the operator; not resumable
)

// Finished reports whether a step in this status needs no more work.
func (s Status) Finished() bool { return s == Done || s == Skipped }

// Run is the record of one cookbook run.
type Run struct {
	Schema   int               `json:"schema"`
	ID       string            `json:"id"`
	Cookbook string            `json:"cookbook"`
	Cluster  string            `json:"cluster,omitempty"`
	Args     map[string]string `json:"args,omitempty"`
	DryRun   bool              `json:"dryRun,omitempty"`
	Status   Status            `json:"status"`
	// Error is why the run stopped, when it failed or was interrupted.
	Error     string     `json:"error,omitempty"`
	StartedAt time.Time  `json:"startedAt"`
	EndedAt   *time.Time `json:"endedAt,omitempty"`
	// SavedAt is when the record was last saved: of two copies of a run (this host's
	// and the cluster's), the later one is current.
	SavedAt *time.Time `json:"savedAt,omitempty"`
	// Holder is who runs (or last ran) this run.
	Holder Holder `json:"holder"`
	// TaskID is the task the run is for (--task-id), appended to its audit lines.
	TaskID string `json:"taskId,omitempty"`
	Steps  []Step `json:"steps"`
	// Values are what steps hand on to later steps, under documented keys.
	Values map[string]json.RawMessage `json:"values,omitempty"`
}

// Holder identifies the process running a run.
type Holder struct {
	User string `json:"user"`
	Host string `json:"host"`
	PID  int    `json:"pid"`
}

// Step is the record of one step of a run.
type Step struct {
	Name        string     `json:"name"`
	Group       string     `json:"group,omitempty"`
	Description string     `json:"description,omitempty"`
	Status      Status     `json:"status"`
	Attempts    int        `json:"attempts,omitempty"`
	StartedAt   *time.Time `json:"startedAt,omitempty"`
	EndedAt     *time.Time `json:"endedAt,omitempty"`
	Error       string     `json:"error,omitempty"`
	// Undone is set once the step's undo ran (when the run was abandoned).
	Undone bool `json:"undone,omitempty"`
}

// Resumable reports whether `cookbook resume` may continue the run.
func (r *Run) Resumable() bool {
	return !r.DryRun && (r.Status == Failed || r.Status == Interrupted || r.Status == Paused || r.Status == Running)
}

// Current returns the step the run is at: the first step not finished, or nil.
func (r *Run) Current() *Step {
	for i := range r.Steps {
		if !r.Steps[i].Status.Finished() {
			return &r.Steps[i]
		}
	}
	return nil
}

// Step returns the record of the named step, or nil.
func (r *Run) Step(name string) *Step {
	for i := range r.Steps {
		if r.Steps[i].Name == name {
			return &r.Steps[i]
		}
	}
	return nil
}

// NewID returns a new run id: the start time and a random suffix, sortable by time.
func NewID(now time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

// Store keeps run files in Dir/runs.
type Store struct {
	Dir string
	// Copy, when set, is given every run once its file is written (cookbook copies it
	// to the cluster). It is called with the run as saved and cannot fail the save.
	Copy func(*Run)
}

// ErrNotFound is returned by Load for an unknown run id.
var ErrNotFound = errors.New("no such run")

func (s *Store) runsDir() string { return filepath.Join(s.Dir, "runs") }

// Path returns the file of the run with the given id.
func (s *Store) Path(id string) string { return filepath.Join(s.runsDir(), id+".json") }

// LogPath returns the log file of the run with the given id.
func (s *Store) LogPath(id string) string { return filepath.Join(s.runsDir(), id+".log") }

// Save writes the run atomically: a temp file in the same directory, fsync, rename,
// fsync of the directory. The file is readable by its owner only.
func (s *Store) Save(r *Run) error {
	if err := checkID(r.ID); err != nil {
		return err
	}
	r.Schema = SchemaVersion
	now := time.Now().UTC()
	r.SavedAt = &now
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("save run %s: %w", r.ID, err)
	}
	if err := os.MkdirAll(s.runsDir(), 0o700); err != nil {
		return fmt.Errorf("save run %s: %w", r.ID, err)
	}
	if err := atomicfile.WriteFile(s.Path(r.ID), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("save run %s: %w", r.ID, err)
	}
	if s.Copy != nil {
		s.Copy(r)
	}
	return nil
}

// Load reads the run with the given id. A truncated, corrupt or newer-version file, a file
// its group or others may read or write, and a file whose record lacks its id, cookbook,
// status or start time, or records another id or an unknown status, are one-line errors
// that name the file; the file is left as it is.
func (s *Store) Load(id string) (*Run, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	return s.load(s.Path(id))
}

func (s *Store) load(path string) (*Run, error) {
	id := strings.TrimSuffix(filepath.Base(path), ".json")
	data, err := readPrivate(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("run %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return Decode("run file "+path, id, data)
}

// Decode reads the record of run id from data, checked as Load checks a file; what
// names the record in errors ("run file /x/y.json").
func Decode(what, id string, data []byte) (*Run, error) {
	var probe struct {
		Schema int `json:"schema"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("%s is corrupt or truncated (%v); it was left as it is", what, err)
	}
	if probe.Schema > SchemaVersion {
		return nil, fmt.Errorf("%s has schema version %d, newer than this cookbook's %d: use a newer cookbook", what, probe.Schema, SchemaVersion)
	}
	if probe.Schema < 1 {
		return nil, fmt.Errorf("%s has no schema version: not a cookbook run file", what)
	}
	var r Run
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s is corrupt (%v); it was left as it is", what, err)
	}
	if err := r.check(id); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return &r, nil
}

// readPrivate reads a run file, refusing one that its group or others may read or
// write: run files may hold host details. The file is refused, not rewritten.
func readPrivate(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("read run file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read run file: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		how := "readable by others"
		if perm&0o044 == 0 {
			how = "writable by others"
		}
		return nil, fmt.Errorf("run file %s has mode %04o (%s; it may hold host details): run chmod 600 %s", path, perm, how, path)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read run file: %w", err)
	}
	return data, nil
}

// statuses are the known statuses, in the order they are listed to the operator.
var statuses = []Status{Pending, Running, Done, Skipped, Failed, Interrupted, Paused, Abandoned}

// check reports the first problem of a run read from the file of run id: a recorded id
// that is not the file's, missing required fields, an unknown status.
func (r *Run) check(id string) error {
	var missing []string
	if r.ID == "" {
		missing = append(missing, `"id"`)
	}
	if r.Cookbook == "" {
		missing = append(missing, `"cookbook"`)
	}
	if r.Status == "" {
		missing = append(missing, `"status"`)
	}
	if r.StartedAt.IsZero() {
		missing = append(missing, `"startedAt"`)
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	if r.ID != id {
		return fmt.Errorf("records id %q, expected %q", r.ID, id)
	}
	if !slices.Contains(statuses, r.Status) {
		names := make([]string, len(statuses))
		for i, st := range statuses {
			names[i] = string(st)
		}
		return fmt.Errorf("unknown status %q, expected one of %s", r.Status, strings.Join(names, ", "))
	}
	return nil
}

// List returns the runs in the store, newest first. Files that cannot be read are
// returned as errors alongside the runs that could.
func (s *Store) List() ([]*Run, []error) {
	paths, err := filepath.Glob(filepath.Join(s.runsDir(), "*.json"))
	if err != nil {
		return nil, []error{err}
	}
	var runs []*Run
	var errs []error
	for _, p := range paths {
		r, err := s.load(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		runs = append(runs, r)
	}
	sort.Slice(runs, func(i, j int) bool {
		if !runs[i].StartedAt.Equal(runs[j].StartedAt) {
			return runs[i].StartedAt.After(runs[j].StartedAt)
		}
		return runs[i].ID > runs[j].ID
	})
	return runs, errs
}

// CheckDir reports, before anything is written, whether dir can serve as the state
// directory: an existing directory this process can write to, or a path that does not
// exist yet whose nearest existing ancestor is such a directory, so that it can be
// created. It creates nothing. The error is one line that names dir and what was expected.
func CheckDir(dir string) error {
	if dir == "" {
		return errors.New("--state-dir is empty: expected a directory path")
	}
	p := filepath.Clean(dir)
	for {
		fi, err := os.Stat(p)
		if err == nil {
			return checkAncestor(dir, p, fi)
		}
		if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			return fmt.Errorf("--state-dir %s: cannot be checked: %s", dir, filekind.Reason(err))
		}
		parent := filepath.Dir(p)
		if parent == p {
			return fmt.Errorf("--state-dir %s: cannot be created: %s", dir, filekind.Reason(err))
		}
		p = parent
	}
}

// checkAncestor checks p, the nearest existing path to dir (dir itself, or an ancestor).
func checkAncestor(dir, p string, fi fs.FileInfo) error {
	self := p == filepath.Clean(dir)
	if !fi.IsDir() {
		if self {
			return fmt.Errorf("--state-dir %s: is %s, expected a directory", dir, filekind.Of(fi.Mode()))
		}
		return fmt.Errorf("--state-dir %s: cannot be created: not a directory (%s is %s)", dir, p, filekind.Of(fi.Mode()))
	}
	if err := unix.Access(p, unix.W_OK|unix.X_OK); err != nil {
		if self {
			return fmt.Errorf("--state-dir %s: is not writable by this process: %s, expected a writable directory", dir, filekind.Reason(err))
		}
		return fmt.Errorf("--state-dir %s: cannot be created: %s (%s is not writable by this process)", dir, filekind.Reason(err), p)
	}
	return nil
}

func checkID(id string) error {
	if id == "" || strings.ContainsAny(id, `/\`) || strings.HasPrefix(id, ".") {
		return fmt.Errorf("%q is not a run id (expected an id as printed by `cookbook runs`)", id)
	}
	return nil
}
