package pipeline

import (
	"time"

	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"example.com/cookbook/cookbooks/state"
)

// answers is a Prompter that gives scripted answers.
type answers struct {
	choices []Choice
	asked   []string
}

var _ Prompter = (*answers)(nil)

func (a *answers) AfterFailure(_ context.Context, step string, _ error) Choice {
	a.asked = append(a.asked, step)
	c := a.choices[0]
	a.choices = a.choices[1:]
	return c
}

// flaky fails its first n calls.
func flaky(n int, calls *int) Func {
	return func(context.Context, *Values) error {
		*calls++
		if *calls <= n {
			return errors.New("boom")
		}
		return nil
	}
}

func TestRetrySkipAbort(t *testing.T) {
	tests := []struct {
		name       string
		choices    []Choice
		wantErr    bool
		wantStatus map[string]state.Status
		wantAfter  int // calls of the step after the flaky one
	}{
		{name: "retry until it works", choices: []Choice{Retry, Retry},
			wantStatus: map[string]state.Status{"a": state.Done, "b": state.Done, "c": state.Done}, wantAfter: 1},
		{name: "skip the failed step", choices: []Choice{SkipStep},
			wantStatus: map[string]state.Status{"a": state.Done, "b": state.Skipped, "c": state.Done}, wantAfter: 1},
		{name: "abort leaves it resumable", choices: []Choice{Retry, Abort}, wantErr: true,
			wantStatus: map[string]state.Status{"a": state.Done, "b": state.Failed, "c": state.Pending}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var bCalls, cCalls int
			steps := []Step{
				{Name: "a", Do: func(context.Context, *Values) error { return nil }},
				{Name: "b", Do: flaky(2, &bCalls)},
				{Name: "c", Do: func(context.Context, *Values) error { cCalls++; return nil }},
			}
			p := &answers{choices: tt.choices}
			run := &state.Run{ID: "r1"}
			err := (&Runner{Prompt: p, Store: &state.Store{Dir: t.TempDir()}}).Run(context.Background(), run, steps)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			var se *StepError
			if tt.wantErr && (!errors.As(err, &se) || se.Step != "b") {
				t.Errorf("error %v does not name step b", err)
			}
			got := map[string]state.Status{}
			for _, s := range run.Steps {
				got[s.Name] = s.Status
			}
			if diff := cmp.Diff(tt.wantStatus, got); diff != "" {
				t.Errorf("statuses (-want +got):\n%s", diff)
			}
			if cCalls != tt.wantAfter {
				t.Errorf("step c ran %d times, want %d", cCalls, tt.wantAfter)
			}
		})
	}
}

func TestValuesSurviveInStateFile(t *testing.T) {
	store := &state.Store{Dir: t.TempDir()}
	key := Key[int]("server-count")
	run := &state.Run{ID: "r2", Cookbook: "test", StartedAt: time.Now()}
	steps := []Step{{Name: "set", Do: func(_ context.Context, v *Values) error {
		if err := key.Set(v, 7); err != nil {
			return err
		}
		// The value is on disk before the step ends.
		saved, err := store.Load("r2")
		if err != nil {
			return err
		}
		if string(saved.Values["server-count"]) != "7" {
			t.Errorf("saved values = %s", saved.Values)
		}
		return nil
	}}}
	if err := (&Runner{Store: store}).Run(context.Background(), run, steps); err != nil {
		t.Fatal(err)
	}
	loaded, _ := store.Load("r2")
	got, err := key.Must(NewValues("r2", loaded.Values, nil))
	if err != nil || got != 7 {
		t.Errorf("Must = %d, %v", got, err)
	}
	if _, err := Key[string]("missing").Must(NewValues("r2", nil, nil)); err == nil {
		t.Error("Must of an unset key did not fail")
	}
}

// TestHoldStopsAtStepBoundary: once Hold fails, the run stops before the next step,
// saved as failed with the reason; the step in progress ends normally.
func TestHoldStopsAtStepBoundary(t *testing.T) {
	lost := errors.New("the cluster's lock was lost")
	var holdErr error
	steps := []Step{
		{Name: "a", Do: func(context.Context, *Values) error { holdErr = lost; return nil }},
		{Name: "b", Do: func(context.Context, *Values) error { t.Error("step b ran"); return nil }},
	}
	store := &state.Store{Dir: t.TempDir()}
	r := &Runner{Store: store, Hold: func() error { return holdErr }}
	run := &state.Run{ID: "20260101-000000-aaaaaa", Cookbook: "t", Status: state.Running, StartedAt: time.Now()}
	err := r.Run(context.Background(), run, steps)
	if !errors.Is(err, lost) {
		t.Fatalf("Run = %v, want the lost lock", err)
	}
	saved, lerr := store.Load(run.ID)
	if lerr != nil {
		t.Fatal(lerr)
	}
	got := map[string]state.Status{"run": saved.Status, "a": saved.Step("a").Status, "b": saved.Step("b").Status}
	want := map[string]state.Status{"run": state.Failed, "a": state.Done, "b": state.Pending}
	if diff := cmp.Diff(want, got); diff != "" || saved.Error != "before step b: "+lost.Error() {
		t.Errorf("saved run (-want +got):\n%s error %q", diff, saved.Error)
	}
}

func TestValidate(t *testing.T) {
	do := func(context.Context, *Values) error { return nil }
	tests := []struct {
		name  string
		steps []Step
		ok    bool
	}{
		{"kebab and groups", Steps(One(Step{Name: "pick-name", Do: do}), Group("node-1", "node 1", Step{Name: "drain", Do: do})), true},
		{"upper case", []Step{{Name: "Drain", Do: do}}, false},
		{"duplicate", []Step{{Name: "a", Do: do}, {Name: "a", Do: do}}, false},
		{"no func", []Step{{Name: "a"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Validate(tt.steps); (err == nil) != tt.ok {
				t.Errorf("Validate = %v", err)
			}
		})
	}
}

func TestResumeWithChangedPlanFails(t *testing.T) {
	do := func(context.Context, *Values) error { return nil }
	run := &state.Run{ID: "r3", Steps: []state.Step{{Name: "old", Status: state.Done}}}
	err := (&Runner{}).Run(context.Background(), run, []Step{{Name: "new", Do: do}})
	if err == nil {
		t.Fatal("a run recorded with another plan was resumed")
	}
}

// TestPauseThenResume: a step that returns Pause is done and the run is saved as paused
// (resumable); running it again goes on with the next step without redoing the paused one.
func TestPauseThenResume(t *testing.T) {
	var aCalls, bCalls int
	steps := []Step{
		{Name: "a", Do: func(context.Context, *Values) error { aCalls++; return Pause("canary done") }},
		{Name: "b", Do: func(context.Context, *Values) error { bCalls++; return nil }},
	}
	store := &state.Store{Dir: t.TempDir()}
	r := &Runner{Store: store}
	run := &state.Run{ID: "20260101-000000-bbbbbb", Cookbook: "t", Status: state.Running, StartedAt: time.Now()}
	err := r.Run(context.Background(), run, steps)
	var pause *PauseError
	if !errors.As(err, &pause) || pause.Reason != "canary done" {
		t.Fatalf("Run = %v, want the pause", err)
	}
	saved, lerr := store.Load(run.ID)
	if lerr != nil {
		t.Fatal(lerr)
	}
	got := map[string]state.Status{"run": saved.Status, "a": saved.Step("a").Status, "b": saved.Step("b").Status}
	want := map[string]state.Status{"run": state.Paused, "a": state.Done, "b": state.Pending}
	if diff := cmp.Diff(want, got); diff != "" || !saved.Resumable() {
		t.Errorf("saved run (-want +got):\n%s resumable %v", diff, saved.Resumable())
	}
	if err := r.Run(context.Background(), saved, steps); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if aCalls != 1 || bCalls != 1 || saved.Status != state.Done {
		t.Errorf("after resume: a ran %d, b ran %d, status %s; want 1, 1, done", aCalls, bCalls, saved.Status)
	}
}

// TestPlanRefusesClashBeforeSaving: a batch group whose sets each carry a step twice
// (a step set composed twice) expands to one name used twice in the group; Plan finds it
// after the expansion and before anything is saved, even though the plan recorded a
// value, and a valid plan is saved only when the caller goes on.
func TestPlanRefusesClashBeforeSaving(t *testing.T) {
	nop := func(context.Context, *Values) error { return nil }
	set := func(node string, steps ...string) Set {
		s := Set{Scope: Scope(node), Title: "node " + node}
		for _, n := range steps {
			s.Steps = append(s.Steps, Step{Name: n, Do: nop})
		}
		return s
	}
	planKey := Key[[]string]("plan")
	tests := []struct {
		name    string
		steps   []string // of each node's set
		wantErr string
	}{
		{name: "set composed twice", steps: []string{"cordon", "drain", "cordon", "drain"}, wantErr: `step name "batch-1/cordon" is used twice`},
		{name: "valid", steps: []string{"cordon", "drain"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := &state.Store{Dir: t.TempDir()}
			run := &state.Run{ID: state.NewID(time.Now()), Cookbook: "roll", Cluster: "c", StartedAt: time.Now(), Status: state.Running}
			r := &Runner{Store: store}
			steps, err := r.Plan(context.Background(), run, func(ctx context.Context, v *Values) ([]Step, error) {
				if err := planKey.Set(v, []string{"w-1", "w-2"}); err != nil {
					return nil, err
				}
				batch, err := Together("batch-1", set("w-1", tt.steps...), set("w-2", tt.steps...))
				if err != nil {
					return nil, err
				}
				return Steps(One(Step{Name: "audit-start", Do: nop}), Group("batch-1", "batch 1/1", batch...)), nil
			})
			runs, _ := store.List()
			if len(runs) != 0 {
				t.Fatalf("Plan saved %d run(s); want none before the caller goes on", len(runs))
			}
			if tt.wantErr != "" {
				var pe *PlanError
				if !errors.As(err, &pe) || err.Error() != tt.wantErr {
					t.Fatalf("Plan: err = %v, want a *PlanError %q", err, tt.wantErr)
				}
				if steps != nil {
					t.Errorf("Plan returned %d steps with its error", len(steps))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// Saves resume after Plan: the run goes on and is stored with the plan's value.
			if err := r.Run(context.Background(), run, steps); err != nil {
				t.Fatal(err)
			}
			got, err := store.Load(run.ID)
			if err != nil {
				t.Fatal(err)
			}
			if v, _ := planKey.Get(NewValues(got.ID, got.Values, nil)); len(v) != 2 || got.Status != state.Done {
				t.Errorf("stored run: plan %v, status %s; want the plan's 2 nodes, done", v, got.Status)
			}
		})
	}
}

// TestRunRefusesInvalidPlan: Run itself checks the steps before its first save.
func TestRunRefusesInvalidPlan(t *testing.T) {
	store := &state.Store{Dir: t.TempDir()}
	run := &state.Run{ID: state.NewID(time.Now()), Cookbook: "c", Cluster: "c", StartedAt: time.Now(), Status: state.Running}
	nop := func(context.Context, *Values) error { return nil }
	err := (&Runner{Store: store}).Run(context.Background(), run, []Step{{Name: "a", Do: nop}, {Name: "a", Do: nop}})
	var pe *PlanError
	if !errors.As(err, &pe) || err.Error() != `step name "a" is used twice` {
		t.Fatalf("Run: err = %v, want a *PlanError naming a", err)
	}
	if runs, _ := store.List(); len(runs) != 0 {
		t.Errorf("Run saved %d run(s) of an invalid plan", len(runs))
	}
}
