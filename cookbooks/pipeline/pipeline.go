// Package pipeline runs a cookbook: an ordered list of named steps, recorded in a state
// file after every change, so that a run stopped at any point is resumed where it stopped.
//
// A step checks before it acts, so running it a second time after an interruption is
// harmless: the runner re-runs the step that was in progress when a run died and skips
// the steps recorded as done.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Func is what a step does. It reads what earlier steps recorded from v and records what
// later steps need in v.
type Func func(ctx context.Context, v *Values) error

// Step is one named unit of work.
type Step struct {
	// Name is a stable kebab-case id, the step's key in state files. Steps of a group
	// are named "<group>/<step>".
	Name string
	// Desc returns a one-line description of what the step will do, with the concrete
	// values (the node, the flavor). It is called when the step starts, so it may use
	// values recorded by earlier steps.
	Desc func(v *Values) string
	// Do does the step's work.
	Do Func
	// Undo, if set, reverses the step (uncordon a node the run cordoned). It runs, in
	// reverse order with the other undos, when an operator abandons the run.
	Undo Func

	// Group is the name of the group the step belongs to ("" for none).
	Group string
	// GroupTitle is how the group is shown ("node toolsbeta-test-k8s-worker-3").
	GroupTitle string
}

// Text returns a Desc that always says s.
func Text(s string) func(*Values) string { return func(*Values) string { return s } }

// Textf returns a Desc that formats once, now.
func Textf(format string, args ...any) func(*Values) string {
	return Text(fmt.Sprintf(format, args...))
}

// Group names steps as a group ("<name>/<step>"), shown as title in progress lines.
func Group(name, title string, steps ...Step) []Step {
	out := make([]Step, len(steps))
	for i, s := range steps {
		s.Name = name + "/" + s.Name
		s.Group = name
		s.GroupTitle = title
		out[i] = s
	}
	return out
}

// Steps flattens steps and groups into one ordered list.
func Steps(parts ...[]Step) []Step {
	var out []Step
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// One wraps a single step for Steps.
func One(s Step) []Step { return []Step{s} }

// SkipError is returned by a step that found nothing to do; the step is recorded as
// skipped with the reason.
type SkipError struct{ Reason string }

func (e *SkipError) Error() string { return "skipped: " + e.Reason }

// Skip returns a SkipError.
func Skip(format string, args ...any) error { return &SkipError{Reason: fmt.Sprintf(format, args...)} }

// PauseError is returned by a step that finished and asks the run to stop there: the
// step is recorded as done and the run as paused, and `cookbook resume` goes on with the
// next step (replace-k8s-nodes --canary stops so after its first node).
type PauseError struct{ Reason string }

func (e *PauseError) Error() string { return "paused: " + e.Reason }

// Pause returns a PauseError.
func Pause(format string, args ...any) error {
	return &PauseError{Reason: fmt.Sprintf(format, args...)}
}

var nameRE = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*(/[a-z0-9]+(-[a-z0-9]+)*)*$`)

// Validate checks that names are kebab-case and unique.
func Validate(steps []Step) error {
	seen := map[string]bool{}
	for _, s := range steps {
		if !nameRE.MatchString(s.Name) {
			return fmt.Errorf("step name %q is not kebab-case", s.Name)
		}
		if seen[s.Name] {
			return fmt.Errorf("step name %q is used twice", s.Name)
		}
		if s.Do == nil {
			return fmt.Errorf("step %q has nothing to do", s.Name)
		}
		seen[s.Name] = true
	}
	return nil
}

// StepError is a step's failure, naming the step.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return fmt.Sprintf("step %s: %v", e.Step, e.Err) }
func (e *StepError) Unwrap() error { return e.Err }

// ErrInterrupted is returned when the run's context was cancelled (a signal).
var ErrInterrupted = errors.New("interrupted")

// ErrAborted is returned when the operator chose to abort after a failure.
var ErrAborted = errors.New("aborted by the operator")

func describe(s Step, v *Values) string {
	if s.Desc == nil {
		return strings.ReplaceAll(s.Name, "-", " ")
	}
	return s.Desc(v)
}
