package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"example.com/cookbook/cookbooks/state"
)

// Choice is the operator's answer after a step failed.
type Choice int

// The answers to a failed step.
const (
	Abort Choice = iota
	Retry
	SkipStep
)

// Prompter asks the operator what to do after a step failed. Runs without a terminal
// have none, and abort.
type Prompter interface {
	AfterFailure(ctx context.Context, step string, err error) Choice
}

// Runner runs steps and records their progress in a run.
type Runner struct {
	// Store saves the run after every change. Nil saves nothing (dry-run).
	Store *state.Store
	// Log receives one line per step start and finish.
	Log *slog.Logger
	// Prompt is asked after a failure; nil means abort.
	Prompt Prompter
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Hold, when set, is asked before each step whether the run may go on (it still
	// holds the cluster's lock): an error stops the run at that step boundary, saved as
	// failed with the error as its reason.
	Hold func() error

	mu     sync.Mutex // guards run and values
	run    *state.Run
	values *Values
	// planning holds saves back while Plan makes the steps: nothing is stored before
	// the plan is known to be valid.
	planning atomic.Bool
}

func (r *Runner) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Runner) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

// Values returns the values of run: the one Values that the run's plan, its steps, the
// goroutines they start and its progress readers share. Every save of the run and every
// change the runner makes to the run's records happen under its lock, so the run is
// never serialised while a value or a step record is being written. A Runner runs one
// run at a time; the first call for a run makes its Values.
func (r *Runner) Values(run *state.Run) *Values {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.values == nil || r.run != run {
		if run.Values == nil {
			run.Values = map[string]json.RawMessage{}
		}
		save := func() error {
			if r.Store == nil || r.planning.Load() {
				return nil
			}
			return r.Store.Save(run)
		}
		r.run, r.values = run, NewValues(run.ID, run.Values, save)
	}
	return r.values
}

// save saves the run under its values' lock.
func (r *Runner) save(run *state.Run) error { return r.update(run, nil) }

// update changes the run's records with f and saves the run, under its values' lock.
func (r *Runner) update(run *state.Run, f func()) error { return r.Values(run).update(f) }

// PlanError is a planned pipeline that cannot run: a step name used twice (two sets of
// a group, or one set composed twice, giving the same names), not kebab-case, or a step
// with nothing to do. It is found before anything of the run is saved.
type PlanError struct{ Err error }

func (e *PlanError) Error() string { return e.Err.Error() }
func (e *PlanError) Unwrap() error { return e.Err }

// Plan makes the run's steps with plan and checks the whole pipeline (every group as
// expanded, e.g. a batch's steps side by side) with Validate before anything of the run
// is saved: the values plan records stay in memory until the steps are valid, so an
// invalid plan (a *PlanError) leaves no trace in the store. Saves resume once Plan
// returns; the caller saves the run when it goes on (Run's first change saves it too).
func (r *Runner) Plan(ctx context.Context, run *state.Run, plan func(context.Context, *Values) ([]Step, error)) ([]Step, error) {
	v := r.Values(run)
	r.planning.Store(true)
	defer r.planning.Store(false)
	steps, err := plan(ctx, v)
	if err != nil {
		return nil, err
	}
	if err := Validate(steps); err != nil {
		return nil, &PlanError{Err: err}
	}
	return steps, nil
}

// Reconcile lines up the run's step records with steps: records of steps already there
// are kept (a resumed run), new steps are added as pending. A recorded step that is no
// longer in the list is an error: the run was made by a different plan.
func Reconcile(run *state.Run, steps []Step) error {
	old := map[string]state.Step{}
	for _, s := range run.Steps {
		old[s.Name] = s
	}
	recs := make([]state.Step, 0, len(steps))
	for _, s := range steps {
		rec, ok := old[s.Name]
		if !ok {
			rec = state.Step{Name: s.Name, Group: s.Group, Status: state.Pending}
		}
		delete(old, s.Name)
		recs = append(recs, rec)
	}
	for name, rec := range old {
		if rec.Status != state.Pending {
			return fmt.Errorf("run %s recorded step %q, which this cookbook's plan no longer has", run.ID, name)
		}
	}
	run.Steps = recs
	return nil
}

// Run runs the steps not yet done, in order, saving the run after every change. It
// returns nil when all are done, a *StepError when a step failed (the run is saved as
// failed), or an error wrapping ErrInterrupted when ctx was cancelled.
func (r *Runner) Run(ctx context.Context, run *state.Run, steps []Step) error {
	if err := Validate(steps); err != nil {
		return &PlanError{Err: err}
	}
	v := r.Values(run)
	v.mu.Lock()
	err := Reconcile(run, steps)
	v.mu.Unlock()
	if err != nil {
		return err
	}
	if err := r.update(run, func() {
		run.Status = state.Running
		run.Error = ""
		run.EndedAt = nil
	}); err != nil {
		return err
	}
	groups := groupIndex(steps)
	for i, s := range steps {
		rec := &run.Steps[i]
		if rec.Status.Finished() {
			r.log().Debug("already "+string(rec.Status), "step", s.Name)
			continue
		}
		if r.Hold != nil {
			if err := r.Hold(); err != nil {
				r.log().Error("stopping before the step", "step", s.Name, "err", err)
				return r.finish(run, state.Failed, fmt.Errorf("before step %s: %w", s.Name, err))
			}
		}
		for {
			err := r.runStep(ctx, run, rec, s, v, groups)
			if err == nil {
				break
			}
			if errors.Is(err, ErrInterrupted) {
				return r.finish(run, state.Interrupted, err)
			}
			var pause *PauseError
			if errors.As(err, &pause) {
				return r.finish(run, state.Paused, err)
			}
			choice := Abort
			if r.Prompt != nil && ctx.Err() == nil {
				choice = r.Prompt.AfterFailure(ctx, s.Name, err)
			}
			if choice == Retry {
				continue
			}
			if choice == SkipStep {
				if err := r.update(run, func() {
					rec.Status = state.Skipped
					rec.Error = "skipped by the operator after: " + rec.Error
				}); err != nil {
					return err
				}
				r.log().Warn("step skipped by the operator", "step", s.Name)
				break
			}
			return r.finish(run, state.Failed, err)
		}
	}
	return r.finish(run, state.Done, nil)
}

func (r *Runner) finish(run *state.Run, st state.Status, err error) error {
	now := r.now()
	if serr := r.update(run, func() {
		run.Status = st
		run.EndedAt = &now
		if err != nil {
			run.Error = err.Error()
		}
	}); serr != nil {
		return errors.Join(err, serr)
	}
	return err
}

func (r *Runner) runStep(ctx context.Context, run *state.Run, rec *state.Step, s Step, v *Values, groups map[string][2]int) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("before step %s: %w", s.Name, ErrInterrupted)
	}
	desc := describe(s, v)
	start := r.now()
	if err := r.update(run, func() {
		rec.Status = state.Running
		rec.Description = desc
		rec.StartedAt = &start
		rec.EndedAt = nil
		rec.Error = ""
		rec.Attempts++
	}); err != nil {
		return &StepError{Step: s.Name, Err: err}
	}
	log := r.log().With("step", s.Name)
	// Which group of how many the step is in is said once, when it starts; the step's name
	// names the group and its description the nodes.
	if g, ok := groups[s.Group]; ok {
		log.Info(desc, "progress", fmt.Sprintf("%d/%d", g[0], g[1]))
	} else {
		log.Info(desc)
	}
	err := s.Do(ctx, v)
	end := r.now()
	dur := end.Sub(start).Round(time.Millisecond)
	status, recErr := state.Done, ""
	var skip *SkipError
	var pause *PauseError
	switch {
	case err == nil:
		log.Info("done", "took", dur)
	case errors.As(err, &pause):
		// The step is done; the run stops after it.
		log.Info("done; pausing the run: "+pause.Reason, "took", dur)
	case errors.As(err, &skip):
		status, recErr = state.Skipped, skip.Reason
		log.Info("skipped: "+skip.Reason, "took", dur)
		err = nil
	case ctx.Err() != nil:
		status, recErr = state.Interrupted, err.Error()
		log.Warn("interrupted", "took", dur, "err", err)
		err = fmt.Errorf("step %s: %w", s.Name, errors.Join(ErrInterrupted, err))
	default:
		status, recErr = state.Failed, err.Error()
		log.Error("failed", "took", dur, "err", err)
		err = &StepError{Step: s.Name, Err: err}
	}
	if serr := r.update(run, func() {
		rec.EndedAt = &end
		rec.Status = status
		rec.Error = recErr
	}); serr != nil {
		return errors.Join(err, serr)
	}
	return err
}

// groupIndex numbers the groups in order: name -> {index (1-based), count}.
func groupIndex(steps []Step) map[string][2]int {
	var order []string
	seen := map[string]bool{}
	for _, s := range steps {
		if s.Group != "" && !seen[s.Group] {
			seen[s.Group] = true
			order = append(order, s.Group)
		}
	}
	out := make(map[string][2]int, len(order))
	for i, g := range order {
		out[g] = [2]int{i + 1, len(order)}
	}
	return out
}

// Abandon gives the run up: the undo of every step that started (done, or stopped half
// way) runs in reverse order, then the run is saved as abandoned. It returns the names of
// the steps it undid. An undo that fails stops the abandon, which can be tried again.
func (r *Runner) Abandon(ctx context.Context, run *state.Run, steps []Step) (undone []string, err error) {
	v := r.Values(run)
	v.mu.Lock()
	err = Reconcile(run, steps)
	v.mu.Unlock()
	if err != nil {
		return nil, err
	}
	for i := len(steps) - 1; i >= 0; i-- {
		s, rec := steps[i], &run.Steps[i]
		if s.Undo == nil || rec.Undone || rec.Status == state.Pending || rec.Attempts == 0 {
			continue
		}
		r.log().Info("undo", "step", s.Name)
		if err := s.Undo(ctx, v); err != nil {
			return undone, fmt.Errorf("undo %s: %w", s.Name, err)
		}
		undone = append(undone, s.Name)
		if err := r.update(run, func() { rec.Undone = true }); err != nil {
			return undone, err
		}
	}
	now := r.now()
	return undone, r.update(run, func() {
		run.Status = state.Abandoned
		run.EndedAt = &now
	})
}
