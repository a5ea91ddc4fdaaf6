package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
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

	mu sync.Mutex
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

func (r *Runner) save(run *state.Run) error {
	if r.Store == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.Store.Save(run)
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
		return err
	}
	if run.Values == nil {
		run.Values = map[string]json.RawMessage{}
	}
	v := NewValues(run.ID, run.Values, func() error { return r.save(run) })
	if err := Reconcile(run, steps); err != nil {
		return err
	}
	run.Status = state.Running
	run.Error = ""
	run.EndedAt = nil
	if err := r.save(run); err != nil {
		return err
	}
	groups := groupIndex(steps)
	for i, s := range steps {
		rec := &run.Steps[i]
		if rec.Status.Finished() {
			r.log().Debug("already "+string(rec.Status), "step", s.Name)
			continue
		}
		for {
			err := r.runStep(ctx, run, rec, s, v, groups)
			if err == nil {
				break
			}
			if errors.Is(err, ErrInterrupted) {
				return r.finish(run, state.Interrupted, err)
			}
			choice := Abort
			if r.Prompt != nil && ctx.Err() == nil {
				choice = r.Prompt.AfterFailure(ctx, s.Name, err)
			}
			if choice == Retry {
				continue
			}
			if choice == SkipStep {
				rec.Status = state.Skipped
				rec.Error = "skipped by the operator after: " + rec.Error
				if err := r.save(run); err != nil {
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
	run.Status = st
	now := r.now()
	run.EndedAt = &now
	if err != nil {
		run.Error = err.Error()
	}
	if serr := r.save(run); serr != nil {
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
	rec.Status = state.Running
	rec.Description = desc
	rec.StartedAt = &start
	rec.EndedAt = nil
	rec.Error = ""
	rec.Attempts++
	if err := r.save(run); err != nil {
		return &StepError{Step: s.Name, Err: err}
	}
	log := r.log().With("step", s.Name)
	if g, ok := groups[s.Group]; ok {
		log = log.With("progress", fmt.Sprintf("%s %d/%d", s.GroupTitle, g[0], g[1]))
	}
	log.Info(desc)
	err := s.Do(ctx, v)
	end := r.now()
	rec.EndedAt = &end
	dur := end.Sub(start).Round(time.Millisecond)
	var skip *SkipError
	switch {
	case err == nil:
		rec.Status = state.Done
		log.Info("done", "took", dur)
	case errors.As(err, &skip):
		rec.Status = state.Skipped
		rec.Error = skip.Reason
		log.Info("skipped: "+skip.Reason, "took", dur)
		err = nil
	case ctx.Err() != nil:
		rec.Status = state.Interrupted
		rec.Error = err.Error()
		log.Warn("interrupted", "took", dur, "err", err)
		err = fmt.Errorf("step %s: %w", s.Name, errors.Join(ErrInterrupted, err))
	default:
		rec.Status = state.Failed
		rec.Error = err.Error()
		log.Error("failed", "took", dur, "err", err)
		err = &StepError{Step: s.Name, Err: err}
	}
	if serr := r.save(run); serr != nil {
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
	if err := Reconcile(run, steps); err != nil {
		return nil, err
	}
	v := NewValues(run.ID, run.Values, func() error { return r.save(run) })
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
		rec.Undone = true
		if err := r.save(run); err != nil {
			return undone, err
		}
	}
	run.Status = state.Abandoned
	now := r.now()
	run.EndedAt = &now
	return undone, r.save(run)
}
