package main

import (
	"context"
	"fmt"
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
		if h := locks.Holder(run.Cluster); h != nil && h.RunID == run.ID {
			return "running"
		}
		if run.Holder.Host == hostname() {
			return "stopped (process gone)"
		}
		return "running on " + run.Holder.Host + "?"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, renewed, live, err := lease.Holder(ctx)
	switch {
	case err != nil:
		return "running on " + run.Holder.Host + "? (lease unreadable)"
	case h != nil && h.RunID == run.ID && live:
		return "running on " + run.Holder.Host
	case h != nil && h.RunID == run.ID:
		return "stopped (lease expired " + time.Since(renewed).Round(time.Second).String() + " ago)"
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
	runs, clusters, errs := allRuns(store, c.String("config"))
	for _, err := range errs {
		fmt.Fprintf(a.stderr, "cookbook: warning: %v\n", err)
	}
	w := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tCOOKBOOK\tCLUSTER\tHOST\tARGS\tSTATUS\tSTEP\tSTARTED\tDURATION")
	for i, r := range runs {
		if i >= c.Int("limit") {
			break
		}
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
	for _, sh := range sharedAll(c.String("config")) {
		if sh.cluster == run.Cluster {
			lease = sh.leases
		}
	}
	locks := &lock.Files{Dir: filepath.Join(dir, "locks")}
	out := c.App.Writer
	fmt.Fprintf(out, "run:      %s\ncookbook: %s %s\ncluster:  %s\nstatus:   %s\nby:       %s@%s pid %d\nstarted:  %s (%s)\n",
		run.ID, run.Cookbook, argString(run.Args), run.Cluster, status(run, locks, lease), run.Holder.User, run.Holder.Host, run.Holder.PID,
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
