package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/lock"
	"example.com/cookbook/cookbooks/records"
	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/k8sops"
)

// hostname is this operator host's name as locks and run records record it:
// $COOKBOOK_HOSTNAME when set (the tests play two operator hosts with it), else the
// system's host name.
func hostname() string {
	if h := os.Getenv("COOKBOOK_HOSTNAME"); h != "" {
		return h
	}
	h, _ := os.Hostname()
	return h
}

// shared is what the operator hosts share for a cluster whose lock is a Lease: the
// Lease and the copies of the run records, in the cluster itself.
type shared struct {
	cluster string
	keep    int
	leases  *lock.Leases
	records *records.Cluster
}

// sharedOf returns the Lease and the run records of cl, or nil for a cluster whose lock
// is a file (flock on this host, records on this host only).
func sharedOf(cl *config.Cluster) (*shared, error) {
	if cl.LockKind() != config.LockLease {
		return nil, nil
	}
	client, err := k8sops.NewClient(cl.Kubernetes.Kubeconfig, cl.Kubernetes.Context)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", cl.Name, err)
	}
	ns, name := cl.LockName()
	d, renew := cl.LockTimes()
	return &shared{
		cluster: cl.Name,
		keep:    cl.RecordsKeep(),
		leases:  &lock.Leases{Client: client, Namespace: ns, Name: name, Duration: d, RenewEvery: renew, Host: hostname()},
		records: &records.Cluster{Client: client, Namespace: ns, Cluster: cl.Name},
	}, nil
}

// sharedAll returns the shared state of every lease cluster of the configuration file,
// by cluster name; nil when the file cannot be read (then only this host's records are
// seen). A cluster whose client cannot be built is left out.
func sharedAll(configPath string) []*shared {
	cfg, err := config.Load(configPath)
	if err != nil {
		return nil
	}
	names := make([]string, 0, len(cfg.Clusters))
	for name := range cfg.Clusters {
		names = append(names, name)
	}
	sort.Strings(names)
	var out []*shared
	for _, name := range names {
		if sh, err := sharedOf(cfg.Clusters[name]); err == nil && sh != nil {
			out = append(out, sh)
		}
	}
	return out
}

// copier returns the Store.Copy that writes each save of a run to the cluster too: best
// effort, retried, never a reason to fail a step. The first failure is a warning (one,
// until a copy succeeds again). Once hold fails (the Lease was lost: another run may own
// the record now) nothing more is written. Each copy carries the last lines of the run's
// log at logPath (records.Tailer), for `runs show --follow` on another host.
func (sh *shared) copier(log *slog.Logger, hold func() error, logPath string) func(*state.Run) {
	failing := false
	tailer := &records.Tailer{Path: logPath}
	return func(run *state.Run) {
		if hold != nil && hold() != nil {
			return
		}
		tail, terr := tailer.Tail()
		if terr != nil {
			log.Debug("run record copied without its log tail", "err", terr)
			tail = nil
		}
		attempts := 3
		if failing {
			attempts = 1 // do not slow every save down while the API does not answer
		}
		var err error
		for i := 0; i < attempts; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			err = sh.records.PutTail(ctx, run, tail)
			cancel()
			if err == nil {
				break
			}
			if i < attempts-1 {
				t := time.NewTimer(time.Duration(i+1) * 200 * time.Millisecond)
				<-t.C
			}
		}
		switch {
		case err != nil && !failing:
			failing = true
			log.Warn("could not copy the run record to the cluster; the local file is the first copy, the copy is tried again at every save", "cluster", sh.cluster, "err", err)
		case err != nil:
			log.Debug("run record still not copied to the cluster", "err", err)
		case failing:
			failing = false
			log.Info("the run record is copied to the cluster again", "cluster", sh.cluster)
		}
	}
}

// prune deletes the cluster's oldest records of finished runs (best effort).
func (sh *shared) prune(log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	deleted, err := sh.records.Prune(ctx, sh.keep)
	if err != nil {
		log.Debug("could not prune the cluster's run records", "err", err)
	}
	if len(deleted) > 0 {
		log.Debug("pruned run records", "cluster", sh.cluster, "keep", sh.keep, "deleted", strings.Join(deleted, ","))
	}
}

// findRun returns the current record of run id: this host's file or the cluster's copy,
// whichever was saved last. A run this host never saw is looked up in the records of
// every lease cluster of the configuration. A failure to read a cluster's records is
// reported inside the not-found error, on its one line.
func findRun(store *state.Store, configPath, id string) (*state.Run, error) {
	local, lerr := store.Load(id)
	if lerr != nil && !errors.Is(lerr, state.ErrNotFound) {
		return nil, lerr
	}
	var problems []string
	var remote *state.Run
	for _, sh := range sharedAll(configPath) {
		if local != nil && local.Cluster != sh.cluster {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := sh.records.Get(ctx, id)
		cancel()
		if err == nil {
			remote = r
			break
		}
		if !errors.Is(err, records.ErrNotFound) {
			problems = append(problems, err.Error())
		}
	}
	if run := records.Newer(local, remote); run != nil {
		return run, nil
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%w (not on this host; %s)", lerr, strings.Join(problems, "; "))
	}
	return nil, lerr
}
