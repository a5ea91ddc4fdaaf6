package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"example.com/cookbook/cookbooks"
	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/dryrun"
)

// The shapes of --output json, named by a schema field so that a reader can tell them
// apart and a later version can change them under a new name (documented in the README).
const (
	planSchema = "cookbook.plan/v1" // a dry-run: the steps and the writes each would make
	runsSchema = "cookbook.runs/v1" // cookbook runs
	runSchema  = "cookbook.run/v1"  // cookbook runs show ID
)

// outputFlag is --output, accepted before the command and after it.
func outputFlag() cli.Flag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "what is printed on stdout: `text` for people, or json (documented shapes)"}
}

// outputOf returns the --output given before or after the command: "text" or "json".
func outputOf(c *cli.Context) (string, error) {
	out := "text"
	for _, cc := range c.Lineage() {
		if cc.IsSet("output") {
			out = cc.String("output")
			break
		}
	}
	if out != "text" && out != "json" {
		return "", cookbooks.BadInputf("--output: %q is not an output format (expected text or json)", out)
	}
	return out, nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// planJSON is a dry-run's plan as data: `cookbook --dry-run --output json COOKBOOK ...`,
// `--dry-run --output json resume ID` and `... abandon ID`.
type planJSON struct {
	Schema   string            `json:"schema"`
	Cookbook string            `json:"cookbook"`
	Cluster  string            `json:"cluster"`
	Args     map[string]string `json:"args,omitempty"`
	// Run is the recorded run a rehearsed resume or abandon continues; "" for a new run.
	Run string `json:"run,omitempty"`
	// Abandon is set for a rehearsed abandon: the steps are the undos, last step first.
	Abandon bool       `json:"abandon,omitempty"`
	Steps   []planStep `json:"steps"`
	// WritesSkipped is the number of writes the dry-run did not make (the sum of Writes).
	WritesSkipped int `json:"writesSkipped"`
}

type planStep struct {
	Name        string `json:"name"`
	Group       string `json:"group,omitempty"`
	Description string `json:"description,omitempty"`
	// Status is what the rehearsal found: done (it would run), skipped (nothing to do, or
	// done by the recorded run already: Recorded says so), failed (it would fail now),
	// pending (not reached).
	Status   string `json:"status"`
	Recorded bool   `json:"recorded,omitempty"`
	Error    string `json:"error,omitempty"`
	// Writes are the actions of the writes the step would make ("cordon node X").
	Writes []string `json:"writes"`
}

// planRecorder collects, step by step, the writes a dry-run skipped.
type planRecorder struct {
	gate   *dryrun.Gate
	mu     sync.Mutex
	writes map[string][]string
	order  []string // steps in the order they ran (undo: last first)
}

// wrap returns steps whose Do and Undo record the writes they skip.
func (p *planRecorder) wrap(steps []pipeline.Step) []pipeline.Step {
	p.writes = map[string][]string{}
	out := make([]pipeline.Step, len(steps))
	for i, s := range steps {
		record := func(f pipeline.Func) pipeline.Func {
			if f == nil {
				return nil
			}
			return func(ctx context.Context, v *pipeline.Values) error {
				n := len(p.gate.Skipped(0))
				err := f(ctx, v)
				p.mu.Lock()
				p.writes[s.Name] = append(p.writes[s.Name], p.gate.Skipped(n)...)
				p.order = append(p.order, s.Name)
				p.mu.Unlock()
				return err
			}
		}
		s.Do, s.Undo = record(s.Do), record(s.Undo)
		out[i] = s
	}
	return out
}

// plan returns the plan of run (its step records after the rehearsal) as data.
func (p *planRecorder) plan(run *state.Run, recorded *state.Run, abandon bool) planJSON {
	out := planJSON{Schema: planSchema, Cookbook: run.Cookbook, Cluster: run.Cluster, Args: run.Args, Abandon: abandon, Steps: []planStep{}}
	if recorded != nil {
		out.Run = recorded.ID
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	step := func(rec state.Step) planStep {
		ps := planStep{Name: rec.Name, Group: rec.Group, Description: rec.Description, Status: string(rec.Status), Error: rec.Error, Writes: p.writes[rec.Name]}
		if recorded != nil {
			if r := recorded.Step(rec.Name); r != nil && r.Status.Finished() {
				ps.Recorded = true
			}
		}
		if ps.Writes == nil {
			ps.Writes = []string{}
		}
		out.WritesSkipped += len(ps.Writes)
		return ps
	}
	if abandon {
		for _, name := range p.order {
			if rec := run.Step(name); rec != nil {
				out.Steps = append(out.Steps, step(*rec))
			}
		}
		return out
	}
	for _, rec := range run.Steps {
		out.Steps = append(out.Steps, step(rec))
	}
	return out
}

// runJSON is one run in `cookbook runs --output json` and `runs show ID --output json`:
// the run file's fields (the state file format, schema 1) and what they mean now.
type runJSON struct {
	*state.Run
	// State is the run's status as `cookbook runs` shows it: a run recorded as running
	// whose process is gone reads "stopped (process gone)".
	State string `json:"state"`
	// At is the step the run is at ("end" when none is left).
	At      string  `json:"at"`
	Seconds float64 `json:"seconds"`
	Log     string  `json:"log"`
}

func newRunJSON(r *state.Run, store *state.Store, st string) runJSON {
	end := time.Now()
	if r.EndedAt != nil {
		end = *r.EndedAt
	}
	return runJSON{Run: r, State: st, At: currentStep(r), Seconds: end.Sub(r.StartedAt).Seconds(), Log: store.LogPath(r.ID)}
}

func writeRuns(w io.Writer, runs []*state.Run, store *state.Store, statusOf func(*state.Run) string) error {
	out := struct {
		Schema string    `json:"schema"`
		Runs   []runJSON `json:"runs"`
	}{Schema: runsSchema, Runs: []runJSON{}}
	for _, r := range runs {
		out.Runs = append(out.Runs, newRunJSON(r, store, statusOf(r)))
	}
	return writeJSON(w, out)
}

func writeRun(w io.Writer, r *state.Run, store *state.Store, st string) error {
	out := struct {
		Schema string  `json:"schema"`
		Run    runJSON `json:"run"`
	}{Schema: runSchema, Run: newRunJSON(r, store, st)}
	if err := writeJSON(w, out); err != nil {
		return fmt.Errorf("write run %s: %w", r.ID, err)
	}
	return nil
}

// taskFlag is --task-id, accepted before the command and after it.
func taskFlag() cli.Flag {
	return &cli.StringFlag{Name: "task-id", Aliases: []string{"t"}, Usage: "the task the run is for (e.g. `T123456`), appended to its audit lines"}
}

// taskOf returns the --task-id given before or after the command ("" if none).
func taskOf(c *cli.Context) (string, error) {
	for _, cc := range c.Lineage() {
		if cc.IsSet("task-id") {
			t := cc.String("task-id")
			if t == "" || len(t) > 64 || strings.ContainsAny(t, " \t\r\n\"'`$;|&<>") {
				return "", cookbooks.BadInputf("--task-id: %q is not a task id (expected a word such as T123456)", cut(t, 40))
			}
			return t, nil
		}
	}
	return "", nil
}

// cut shortens s for an error message.
func cut(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n]) + "..."
	}
	return s
}
