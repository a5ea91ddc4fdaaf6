package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"example.com/cookbook/cookbooks"
	"example.com/cookbook/cookbooks/lock"
	"example.com/cookbook/cookbooks/records"
	"example.com/cookbook/cookbooks/state"
)

// status says what a run's status means now: a run recorded as running whose lock is
// not held by it any more was stopped without a chance to say so (kill -9). A run of
// this host is asked of the flock of the state dir; a run of another host, of its
// cluster's Lease (nil for a cluster locked by files, or when it could not be read).
func status(run *state.Run, locks *lock.Files, lease *lock.Leases) string {
	if run.Status != state.Running {
		return string(run.Status)
	}
	if run.Holder.Host == hostname() || lease == nil {
		for _, h := range locks.Holders(run.Cluster) {
			if h.RunID == run.ID {
				return "running"
			}
		}
		if run.Holder.Host == hostname() {
			return "stopped (process gone)"
		}
		return "running on " + run.Holder.Host + "?"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	all, err := lease.Holders(ctx)
	if err != nil {
		return "running on " + run.Holder.Host + "? (lease unreadable)"
	}
	for _, e := range all {
		switch {
		case e.Holder.RunID == run.ID && e.Live:
			return "running on " + run.Holder.Host
		case e.Holder.RunID == run.ID:
			return "stopped (lease expired " + time.Since(e.Renewed).Round(time.Second).String() + " ago)"
		}
	}
	return "stopped (process gone)"
}

// allRuns returns the runs of this host and of the lease clusters of the configuration,
// newest first; of a run recorded in both, the copy saved last. Runs by cluster name
// are paired with their cluster's shared state.
func allRuns(store *state.Store, configPath string) ([]*state.Run, map[string]*shared, []error) {
	runs, errs := store.List()
	byID := map[string]int{}
	for i, r := range runs {
		byID[r.ID] = i
	}
	clusters := map[string]*shared{}
	for _, sh := range sharedAll(configPath) {
		clusters[sh.cluster] = sh
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		remote, rerrs := sh.records.List(ctx)
		cancel()
		errs = append(errs, rerrs...)
		for _, r := range remote {
			if i, ok := byID[r.ID]; ok {
				runs[i] = records.Newer(runs[i], r)
				continue
			}
			byID[r.ID] = len(runs)
			runs = append(runs, r)
		}
	}
	sort.SliceStable(runs, func(i, j int) bool {
		if !runs[i].StartedAt.Equal(runs[j].StartedAt) {
			return runs[i].StartedAt.After(runs[j].StartedAt)
		}
		return runs[i].ID > runs[j].ID
	})
	return runs, clusters, errs
}

func leaseOf(clusters map[string]*shared, cluster string) *lock.Leases {
	if sh := clusters[cluster]; sh != nil {
		return sh.leases
	}
	return nil
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
	runs, clusters, errs := allRuns(store, c.String("config"))
	for _, err := range errs {
		fmt.Fprintf(a.stderr, "cookbook: warning: %v\n", err)
	}
	if len(runs) > c.Int("limit") {
		runs = runs[:c.Int("limit")]
	}
	if output == "json" {
		return writeRuns(c.App.Writer, runs, store, func(r *state.Run) string { return status(r, locks, leaseOf(clusters, r.Cluster)) })
	}
	w := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tCOOKBOOK\tCLUSTER\tHOST\tARGS\tSTATUS\tSTEP\tSTARTED\tDURATION")
	for _, r := range runs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Cookbook, r.Cluster, r.Holder.Host, argString(r.Args),
			status(r, locks, leaseOf(clusters, r.Cluster)), currentStep(r), r.StartedAt.Local().Format(time.DateTime), duration(r))
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
	run, err := findRun(store, c.String("config"), id)
	if err != nil {
		return cookbooks.BadInput(err)
	}
	var lease *lock.Leases
	var sh *shared
	for _, s := range sharedAll(c.String("config")) {
		if s.cluster == run.Cluster {
			sh, lease = s, s.leases
		}
	}
	locks := &lock.Files{Dir: filepath.Join(dir, "locks")}
	out := c.App.Writer
	output, err := outputOf(c)
	if err != nil {
		return err
	}
	statusOf := func(r *state.Run) string { return status(r, locks, lease) }
	if output == "json" {
		return writeRun(out, run, store, statusOf(run))
	}
	if c.Bool("follow") {
		if sh != nil && run.Holder.Host != hostname() {
			return a.followRecord(c.Context, out, store, sh, statusOf, run)
		}
		return a.follow(c.Context, out, store, statusOf, run)
	}
	return printRun(out, store, statusOf(run), run)
}

// follow prints the run's steps, then its log as it is written, until the run is no
// longer running (or its process is gone), then its steps again, and returns the run's
// outcome (nil when it is done). It reads the files the run writes, so it works from any
// shell on the host (a run of another host is followed by followRecord); Ctrl-C stops
// following, not the run. It reads the log and the run file every 250 ms: a small read
// of files in the page cache, cheaper to keep than an inotify watch to get right.
func (a *app) follow(ctx context.Context, out io.Writer, store *state.Store, statusOf func(*state.Run) string, run *state.Run) error {
	if err := printRun(out, store, statusOf(run), run); err != nil {
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
		if st := statusOf(cur); st != "running" {
			// What the run wrote before it ended.
			if n, err := copyFrom(out, store.LogPath(run.ID), offset); err == nil {
				offset += n
			}
			fmt.Fprintf(out, "--- run %s: %s ---\n\n", cur.ID, st)
			if err := printRun(out, store, st, cur); err != nil {
				return err
			}
			return outcome(cur, st)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// followTick is how often followRecord asks the Lease whether the run's host still
// holds it (a host killed mid-run leaves its record "running").
const followTick = 2 * time.Second

// followRecord follows a run of another operator host through its cluster's record
// (records.Follow: a watch on its ConfigMap, which the running host rewrites at every
// save of the run): it prints the steps, then the end of the log the record carries and
// each step as its status changes, until the run is no longer running (or its host lost
// the Lease), then the step table again, and returns the run's outcome. Log lines
// written after the run's last save are not in the record.
func (a *app) followRecord(ctx context.Context, out io.Writer, store *state.Store, sh *shared, statusOf func(*state.Run) string, run *state.Run) error {
	if err := printRun(out, store, statusOf(run), run); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n--- run %s on %s: steps and log from its record in cluster %s ---\n", run.ID, run.Holder.Host, sh.cluster)
	printed := map[string]state.Status{}
	for _, s := range run.Steps {
		printed[s.Name] = s.Status
	}
	next := -1 // the number of the next log line to print; -1 before the first tail
	var final *state.Run
	var finalSt string
	var gone time.Time // when the record was first seen running with its Lease gone
	err := sh.records.Follow(ctx, run.ID, followTick, followTick, func(cur *state.Run, tail *records.Tail) (bool, error) {
		if tail != nil {
			if next < 0 {
				next = tail.First
			}
			if tail.First > next {
				fmt.Fprintf(out, "[%d log line(s) went by between two saves of the record]\n", tail.First-next)
				next = tail.First
			}
			for i, l := range tail.Lines {
				if tail.First+i >= next {
					fmt.Fprintln(out, l)
				}
			}
			next = max(next, tail.First+len(tail.Lines))
		}
		for _, s := range cur.Steps {
			if printed[s.Name] == s.Status {
				continue
			}
			printed[s.Name] = s.Status
			if s.Status != state.Pending {
				fmt.Fprintln(out, stepLine(s))
			}
		}
		st := statusOf(cur)
		switch {
		case strings.HasPrefix(st, "running"):
			gone = time.Time{}
			return false, nil
		case cur.Status == state.Running && gone.IsZero():
			// The record says running but its host holds no Lease: either it was killed,
			// or it saved its end and released the Lease a moment ago and the watch has
			// not brought that save yet. Decide at the next tick, not on this one read.
			gone = time.Now()
			return false, nil
		case cur.Status == state.Running && time.Since(gone) < followTick:
			return false, nil
		}
		final, finalSt = cur, st
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("follow run %s: %w", run.ID, err)
	}
	if final == nil {
		return nil // Ctrl-C
	}
	fmt.Fprintf(out, "--- run %s: %s ---\n\n", final.ID, finalSt)
	if err := printRun(out, store, finalSt, final); err != nil {
		return err
	}
	return outcome(final, finalSt)
}

// stepLine is one line saying where a step is: "step batch-1/drain: done (1.2s)".
func stepLine(s state.Step) string {
	line := fmt.Sprintf("step %s: %s", s.Name, s.Status)
	if s.Undone {
		line += " (undone)"
	}
	if s.StartedAt != nil && s.EndedAt != nil {
		line += " (" + s.EndedAt.Sub(*s.StartedAt).Round(time.Millisecond).String() + ")"
	}
	if s.Error != "" {
		line += ": " + s.Error
	}
	return line
}

// outcome is what `runs show --follow` exits with once the run is no longer running:
// nil for a run done, else an error saying how it ended (exit 1).
func outcome(run *state.Run, st string) error {
	if run.Status == state.Done {
		return nil
	}
	if run.Error != "" {
		return fmt.Errorf("run %s ended %s: %s", run.ID, st, run.Error)
	}
	return fmt.Errorf("run %s ended %s", run.ID, st)
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

// printRun prints a run (whose status, as `runs` shows it, is st) and its step table.
func printRun(out io.Writer, store *state.Store, st string, run *state.Run) error {
	fmt.Fprintf(out, "run:      %s\ncookbook: %s %s\ncluster:  %s\nstatus:   %s\nby:       %s@%s pid %d\nstarted:  %s (%s)\n",
		run.ID, run.Cookbook, argString(run.Args), run.Cluster, st, run.Holder.User, run.Holder.Host, run.Holder.PID,
		run.StartedAt.Local().Format(time.DateTime), duration(run))
	if run.Error != "" {
		fmt.Fprintf(out, "error:    %s\n", run.Error)
	}
	if run.Holder.Host != "" && run.Holder.Host != hostname() {
		fmt.Fprintf(out, "log:      on %s (its last lines: runs show --follow)\n\n", run.Holder.Host)
	} else {
		fmt.Fprintf(out, "log:      %s\n\n", store.LogPath(run.ID))
	}
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
