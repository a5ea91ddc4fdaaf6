// Package cookbooks holds the jobs operators run. Each cookbook is a pipeline of named
// steps (package pipeline) and reads like the runbook an operator would write by hand;
// All lists them in the order `cookbook list` shows them.
package cookbooks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/urfave/cli/v2"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/audit"
	"example.com/cookbook/cookbooks/lock"
	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/dryrun"
)

// Cookbook is one job an operator can run.
type Cookbook struct {
	// Name is the command name (kebab-case).
	Name string
	// Usage is a one-line description for `cookbook list`.
	Usage string
	// Example is shown in `cookbook NAME --help`.
	Example string
	// Flags are the cookbook's own flags.
	Flags []cli.Flag
	// ReadOnly cookbooks take no lock and write no state file.
	ReadOnly bool
	// Prepare validates the flags and returns the job. An error wrapped by BadInput
	// means bad input: exit 2, nothing changed.
	Prepare func(c *cli.Context, env *Env) (*Job, error)
}

// Job is a prepared run of a cookbook.
type Job struct {
	// Cluster the job works on; it is locked for the run's life.
	Cluster string
	// Check, if not nil, validates the input against the cluster with reads only, before a
	// new run (or a dry-run) starts: it returns BadInput errors, and nothing is recorded.
	Check func(ctx context.Context) error
	// Confirm, if not empty, is asked (yes/no) before a new run starts, unless --yes.
	Confirm func(ctx context.Context) (string, error)
	// Plan returns the steps. It may read the cluster; what it decides is recorded in v
	// so that a resumed run follows the same plan.
	Plan func(ctx context.Context, v *pipeline.Values) ([]pipeline.Step, error)
	// Close, if not nil, is called once the run's steps have ended, however they ended:
	// it stops what Plan started for the run (the health gate's watches).
	Close func()
	// ClaimJob, when not empty, names what the run does for the cluster's lock (see
	// lock.Claim): runs of the same ClaimJob on disjoint nodes share the lock. Claim
	// returns the run's claim, with reads only: the nodes it will take, which its Plan
	// then uses; given the claim a resumed run recorded, it keeps to those nodes.
	ClaimJob string
	Claim    func(ctx context.Context, recorded *lock.Claim) (*lock.Claim, error)
}

// Env is what cookbooks get from the command line and the configuration.
type Env struct {
	// ConfigPath is the configuration file; it is loaded on first use.
	ConfigPath string
	// DryRun is --dry-run: every read for real, no write.
	DryRun bool
	// Yes is --yes.
	Yes bool
	// Ask asks the operator a yes/no question in the middle of a run (unless Yes); nil,
	// or an error (no terminal), is no answer.
	Ask func(question string) (bool, error)
	// Output is --output: "text" (for people) or "json" (the documented shapes), for what
	// a cookbook prints on stdout (list-nodes' table, a dry-run's plan).
	Output string
	// Log is the run's logger.
	Log *slog.Logger
	// Gate is the dry-run choke point every backend's writes pass through.
	Gate *dryrun.Gate
	// Audit receives the lines worth telling the team; nil in dry-run.
	Audit *audit.Sink
	// StateDir is --state-dir: run records, locks, and the host keys learned from new
	// servers' consoles (known_hosts).
	StateDir string
	// Others, when not nil, returns the nodes that other live runs sharing the cluster's
	// lock with this one hold (chunks of the same upgrade): they are theirs to take down,
	// not this run's to count or wait for.
	Others func(ctx context.Context) []string

	cfg *config.Config
}

// Config loads the configuration file once. An error is bad input.
func (e *Env) Config() (*config.Config, error) {
	if e.cfg != nil {
		return e.cfg, nil
	}
	cfg, err := config.Load(e.ConfigPath)
	if err != nil {
		return nil, BadInput(err)
	}
	e.cfg = cfg
	return cfg, nil
}

// Cluster returns the named cluster from the configuration. An error is bad input.
func (e *Env) Cluster(name string) (*config.Cluster, error) {
	if name == "" {
		return nil, BadInput(errors.New("--cluster-name is required"))
	}
	if err := config.CheckName(name); err != nil {
		return nil, BadInput(fmt.Errorf("--cluster-name: %w", err))
	}
	cfg, err := e.Config()
	if err != nil {
		return nil, err
	}
	cl, err := cfg.Cluster(name)
	if err != nil {
		return nil, BadInput(err)
	}
	return cl, nil
}

// InputError is bad input from the operator: the run exits 2 and changes nothing.
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

// BadInput marks err as bad input.
func BadInput(err error) error {
	if err == nil {
		return nil
	}
	var in *InputError
	if errors.As(err, &in) {
		return err
	}
	return &InputError{Err: err}
}

// BadInputf formats a bad-input error.
func BadInputf(format string, args ...any) error { return BadInput(fmt.Errorf(format, args...)) }

// others returns the nodes other live runs sharing the cluster's lock hold, as a set.
func (e *Env) others(ctx context.Context) map[string]bool {
	out := map[string]bool{}
	if e.Others != nil {
		for _, n := range e.Others(ctx) {
			out[n] = true
		}
	}
	return out
}
