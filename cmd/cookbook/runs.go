package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"example.com/cookbook/cookbooks"
	"example.com/cookbook/cookbooks/lock"
	"example.com/cookbook/cookbooks/state"
)

// status says what a run's status means now: a run recorded as running whose cluster
// lock is not held by it any more was stopped without a chance to say so (kill -9).
func status(run *state.Run, locks *lock.Files) string {
	if run.Status != state.Running {
		return string(run.Status)
	}
	if h := locks.Holder(run.Cluster); h != nil && h.RunID == run.ID {
		return "running"
	}
	return "stopped (process gone)"
}

func duration(run *state.Run) string {
	end := time.Now()
	if run.EndedAt != nil {
		end = *run.EndedAt
	}
	return end.Sub(run.StartedAt).Round(time.Second).String()
}

func (a *app) runs(c *cli.Context) error {
	if c.Args().Present() {
		return cookbooks.BadInputf("unexpected argument %q (`cookbook runs` takes only --limit; to see one run: cookbook runs show ID)", c.Args().First())
	}
	if err := cookbooks.NonNegativeInt("limit", c.Int("limit")); err != nil {
		return err
	}
	store, err := openStore(c)
	if err != nil {
		return err
	}
	dir := store.Dir
	locks := &lock.Files{Dir: filepath.Join(dir, "locks")}
	output, err := outputOf(c)
	if err != nil {
		return err
	}
	runs, errs := store.List()
	for _, err := range errs {
		fmt.Fprintf(a.stderr, "cookbook: warning: %v\n", err)
	}
	if len(runs) > c.Int("limit") {
		runs = runs[:c.Int("limit")]
	}
	if output == "json" {
		return writeRuns(c.App.Writer, runs, store, locks)
	}
	w := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tCOOKBOOK\tCLUSTER\tARGS\tSTATUS\tSTEP\tSTARTED\tDURATION")
	for _, r := range runs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Cookbook, r.Cluster, argString(r.Args),
			status(r, locks), currentStep(r), r.StartedAt.Local().Format(time.DateTime), duration(r))
	}
	return w.Flush()
}

func (a *app) show(c *cli.Context) error {
	id := c.Args().First()
	if id == "" {
		return cookbooks.BadInputf("expected a run id (see `cookbook runs`)")
	}
	if c.Args().Len() > 1 {
		return cookbooks.BadInputf("expected one run id, got %d: %s (see `cookbook runs`)", c.Args().Len(), strings.Join(c.Args().Slice(), " "))
	}
	store, err := openStore(c)
	if err != nil {
		return err
	}
	dir := store.Dir
	run, err := store.Load(id)
	if err != nil {
		return cookbooks.BadInput(err)
	}
	locks := &lock.Files{Dir: filepath.Join(dir, "locks")}
	out := c.App.Writer
	output, err := outputOf(c)
	if err != nil {
		return err
	}
	if output == "json" {
		return writeRun(out, run, store, locks)
	}
	fmt.Fprintf(out, "run:      %s\ncookbook: %s %s\ncluster:  %s\nstatus:   %s\nby:       %s@%s pid %d\nstarted:  %s (%s)\n",
		run.ID, run.Cookbook, argString(run.Args), run.Cluster, status(run, locks), run.Holder.User, run.Holder.Host, run.Holder.PID,
		run.StartedAt.Local().Format(time.DateTime), duration(run))
	if run.Error != "" {
		fmt.Fprintf(out, "error:    %s\n", run.Error)
	}
	fmt.Fprintf(out, "log:      %s\n\n", store.LogPath(run.ID))
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "STEP\tSTATUS\tSTARTED\tTOOK\tDESCRIPTION / ERROR")
	group := ""
	for _, s := range run.Steps {
		if s.Group != group && s.Group != "" {
			fmt.Fprintf(w, "[%s]\t\t\t\t\n", s.Group)
		}
		group = s.Group
		started, took := "", ""
		if s.StartedAt != nil {
			started = s.StartedAt.Local().Format(time.TimeOnly)
			if s.EndedAt != nil {
				took = s.EndedAt.Sub(*s.StartedAt).Round(time.Millisecond).String()
			}
		}
		text := s.Description
		if s.Error != "" {
			text = "ERROR: " + s.Error
		}
		st := string(s.Status)
		if s.Undone {
			st += " (undone)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", s.Name, st, started, took, text)
	}
	return w.Flush()
}
