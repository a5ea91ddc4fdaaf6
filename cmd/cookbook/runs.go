package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
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
	if c.Bool("follow") {
		return a.follow(c.Context, out, store, locks, run)
	}
	return printRun(out, store, locks, run)
}

// follow prints the run's steps, then its log as it is written, until the run is no
// longer running (or its process is gone), then its steps again. It reads the files the
// run writes, so it works from any shell on the host; Ctrl-C stops following, not the run.
func (a *app) follow(ctx context.Context, out io.Writer, store *state.Store, locks *lock.Files, run *state.Run) error {
	if err := printRun(out, store, locks, run); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n--- log (%s) ---\n", store.LogPath(run.ID))
	var offset int64
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		n, err := copyFrom(out, store.LogPath(run.ID), offset)
		if err != nil {
			return err
		}
		offset += n
		cur, err := store.Load(run.ID)
		if err != nil {
			return err
		}
		if st := status(cur, locks); st != "running" {
			// What the run wrote before it ended.
			if n, err := copyFrom(out, store.LogPath(run.ID), offset); err == nil {
				offset += n
			}
			fmt.Fprintf(out, "--- run %s: %s ---\n\n", cur.ID, st)
			return printRun(out, store, locks, cur)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// copyFrom copies what path holds from offset on to w and returns how much it copied.
func copyFrom(w io.Writer, path string, offset int64) (int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("follow: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return 0, fmt.Errorf("follow: %w", err)
	}
	n, err := io.Copy(w, f)
	if err != nil {
		return n, fmt.Errorf("follow: %w", err)
	}
	return n, nil
}

// printRun prints a run and its step table.
func printRun(out io.Writer, store *state.Store, locks *lock.Files, run *state.Run) error {
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
