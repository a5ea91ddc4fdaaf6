package pipeline

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"example.com/cookbook/cookbooks/state"
)

func TestScopeKeys(t *testing.T) {
	k := Key[string]("server-id")
	if got := string(In(Scope("w-3"), k)); got != "w-3/server-id" {
		t.Errorf("In(w-3) = %q", got)
	}
	if got := string(In(Scope(""), k)); got != "server-id" {
		t.Errorf("In(root) = %q", got)
	}
}

// TestTogether runs two steps over three sets at once; one set's second step fails, then
// the run is resumed: only that set's step runs again, and the error names the set.
func TestTogether(t *testing.T) {
	var mu sync.Mutex
	calls := map[string]int{}
	fail := map[string]bool{"n-2/b": true}
	set := func(node string) Set {
		step := func(name string) Step {
			return Step{Name: name, Desc: Textf("%s %s", name, node), Do: func(ctx context.Context, v *Values) error {
				mu.Lock()
				defer mu.Unlock()
				calls[node+"/"+name]++
				if fail[node+"/"+name] {
					return errors.New("broken")
				}
				return nil
			}}
		}
		return Set{Scope: Scope(node), Title: "node " + node, Steps: []Step{step("a"), step("b")}}
	}
	steps, err := Together("batch-1", set("n-1"), set("n-2"), set("n-3"))
	if err != nil {
		t.Fatal(err)
	}
	steps = Group("batch-1", "batch 1", steps...)
	store := &state.Store{Dir: t.TempDir()}
	run := &state.Run{ID: "r-together", Cookbook: "toy"}
	runner := &Runner{Store: store}
	err = runner.Run(context.Background(), run, steps)
	var se *StepError
	if !errors.As(err, &se) || se.Step != "batch-1/b" || !strings.Contains(err.Error(), "node n-2: broken") || strings.Contains(err.Error(), "n-1") {
		t.Fatalf("err = %v, want step batch-1/b naming node n-2 only", err)
	}
	if got := run.Step("batch-1/a").Description; got != "a n-1, n-2, n-3" {
		t.Errorf("description %q", got)
	}

	fail["n-2/b"] = false
	if err := (&Runner{Store: store}).Run(context.Background(), run, steps); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"n-1/a": 1, "n-2/a": 1, "n-3/a": 1, "n-1/b": 1, "n-2/b": 2, "n-3/b": 1}
	if diff := cmp.Diff(want, calls); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	if _, ok := run.Values["n-2/batch-1/b"]; !ok {
		t.Errorf("n-2's finished mark not recorded: %v", run.Values)
	}
}

func TestTogetherRefusesUnlikeSets(t *testing.T) {
	do := func(context.Context, *Values) error { return nil }
	_, err := Together("t", Set{Scope: "a", Steps: []Step{{Name: "x", Do: do}}}, Set{Scope: "b", Steps: []Step{{Name: "y", Do: do}}})
	if err == nil || !strings.Contains(err.Error(), `step 1 of set b is "y"`) {
		t.Errorf("err = %v", err)
	}
}
