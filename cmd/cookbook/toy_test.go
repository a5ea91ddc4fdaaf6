package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"example.com/cookbook/cookbooks"
	"example.com/cookbook/cookbooks/pipeline"
)

// toy is a cookbook used only by tests. Its steps create marker files in --dir through
// the dry-run gate, each checking before it acts; a step fails while a file
// break-<step> exists in --dir, and waits --step-time before acting (so that a test can
// kill the process inside a step) and for as long as a file named hold exists in --dir;
// a cancelled step takes --stop-time to return.
func toy() cookbooks.Cookbook {
	return cookbooks.Cookbook{
		Name:  "toy",
		Usage: "a test cookbook that creates marker files",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "cluster-name", Required: true},
			&cli.StringFlag{Name: "dir", Required: true},
			&cli.IntFlag{Name: "items", Value: 4},
			&cli.DurationFlag{Name: "step-time"},
			&cli.DurationFlag{Name: "stop-time"},
			&cli.StringSliceFlag{Name: "tag"},
			&cli.BoolFlag{Name: "confirm"},
			&cli.BoolFlag{Name: "clash"},
		},
		Prepare: func(c *cli.Context, env *cookbooks.Env) (*cookbooks.Job, error) {
			cl, err := env.Cluster(c.String("cluster-name"))
			if err != nil {
				return nil, err
			}
			if c.Int("items") < 1 {
				return nil, cookbooks.BadInputf("--items: %d is not a positive number", c.Int("items"))
			}
			t := &toyRun{dir: c.String("dir"), stepTime: c.Duration("step-time"), stopTime: c.Duration("stop-time"), tags: c.StringSlice("tag"), env: env}
			job := &cookbooks.Job{Cluster: cl.Name, Plan: func(ctx context.Context, v *pipeline.Values) ([]pipeline.Step, error) {
				if c.Bool("clash") {
					return t.clashingPlan(ctx, v, c.Int("items"))
				}
				return t.plan(c.Int("items")), nil
			}}
			if c.Bool("confirm") {
				job.Confirm = func(context.Context) (string, error) { return "Really create markers in " + t.dir + "?", nil }
			}
			return job, nil
		},
	}
}

// tokenKey is recorded by the first step and read by the last: values survive a restart.
const tokenKey = pipeline.Key[string]("token")

type toyRun struct {
	dir      string
	stepTime time.Duration
	stopTime time.Duration // how long a cancelled step takes to stop (an SSH command ending)
	tags     []string      // --tag, written with the result
	env      *cookbooks.Env
}

func (t *toyRun) plan(items int) []pipeline.Step {
	parts := [][]pipeline.Step{pipeline.One(pipeline.Step{Name: "record-token", Desc: pipeline.Text("record a token"), Do: t.recordToken})}
	for i := 1; i <= items; i++ {
		name := fmt.Sprintf("item-%d", i)
		parts = append(parts, pipeline.Group(name, "item "+name,
			pipeline.Step{Name: "mark", Desc: pipeline.Textf("create marker %s", name), Do: t.mark(name), Undo: t.unmark(name)},
		))
	}
	parts = append(parts, pipeline.One(pipeline.Step{Name: "finish", Desc: pipeline.Text("write the result"), Do: t.finish}))
	return pipeline.Steps(parts...)
}

// clashingPlan is the bug a batch group can have: it records its plan (as a rolling job
// records its batches), then builds one batch of every item side by side whose item set
// is composed twice, so the batch has each step name twice.
func (t *toyRun) clashingPlan(ctx context.Context, v *pipeline.Values, items int) ([]pipeline.Step, error) {
	var names []string
	sets := make([]pipeline.Set, items)
	for i := range sets {
		name := fmt.Sprintf("item-%d", i+1)
		names = append(names, name)
		mark := pipeline.Step{Name: "mark", Desc: pipeline.Textf("create marker %s", name), Do: t.mark(name), Undo: t.unmark(name)}
		sets[i] = pipeline.Set{Scope: pipeline.Scope(name), Title: "item " + name, Steps: []pipeline.Step{mark, mark}}
	}
	if err := pipeline.Key[[]string]("toy/plan").Set(v, names); err != nil {
		return nil, err
	}
	batch, err := pipeline.Together("batch-1", sets...)
	if err != nil {
		return nil, err
	}
	return pipeline.Steps(pipeline.Group("batch-1", "batch 1/1", batch...), pipeline.One(pipeline.Step{Name: "finish", Do: t.finish})), nil
}

func (t *toyRun) wait(ctx context.Context, step string) error {
	if _, err := os.Stat(filepath.Join(t.dir, "break-"+step)); err == nil {
		return fmt.Errorf("%s is broken (break-%s exists)", step, step)
	}
	deadline := time.Now().Add(t.stepTime)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		_, holdErr := os.Stat(filepath.Join(t.dir, "hold"))
		if holdErr != nil && !time.Now().Before(deadline) {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			time.Sleep(t.stopTime)
			return ctx.Err()
		}
	}
}

func (t *toyRun) recordToken(ctx context.Context, v *pipeline.Values) error {
	if _, ok := tokenKey.Get(v); ok {
		return nil
	}
	return tokenKey.Set(v, "token-of-"+v.RunID())
}

func (t *toyRun) mark(name string) pipeline.Func {
	return func(ctx context.Context, v *pipeline.Values) error {
		if err := t.wait(ctx, name); err != nil {
			return err
		}
		path := filepath.Join(t.dir, "marker-"+name)
		if _, err := os.Stat(path); err == nil {
			return nil // done before an interruption
		}
		return t.env.Gate.Write(ctx, "create marker "+name, func(context.Context) error {
			// O_EXCL: acting twice would fail the step.
			f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			return f.Close()
		}, nil)
	}
}

func (t *toyRun) unmark(name string) pipeline.Func {
	return func(ctx context.Context, v *pipeline.Values) error {
		path := filepath.Join(t.dir, "marker-"+name)
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return t.env.Gate.Write(ctx, "remove marker "+name, func(context.Context) error {
			return os.Remove(path)
		}, nil)
	}
}

func (t *toyRun) finish(ctx context.Context, v *pipeline.Values) error {
	tok, err := tokenKey.Must(v)
	if err != nil {
		return err
	}
	if err := t.wait(ctx, "finish"); err != nil {
		return err
	}
	return t.env.Gate.Write(ctx, "write result", func(context.Context) error {
		if len(t.tags) > 0 {
			if err := os.WriteFile(filepath.Join(t.dir, "tags"), []byte(strings.Join(t.tags, "|")), 0o600); err != nil {
				return err
			}
		}
		return os.WriteFile(filepath.Join(t.dir, "result"), []byte(tok), 0o600)
	}, nil)
}
