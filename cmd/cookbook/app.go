package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks"
	"example.com/cookbook/cookbooks/audit"
	"example.com/cookbook/cookbooks/lock"
	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/dryrun"
)

// continuation tells a cookbook command that it continues (or gives up) a recorded run
// instead of starting a new one: `resume` and `abandon` build an app that carries one.
type continuation struct {
	run     *state.Run
	abandon bool
}

func newApp(books []cookbooks.Cookbook, stdin io.Reader, stderr io.Writer) *cli.App {
	return newAppFor(books, stdin, stderr, nil)
}

// newAppFor returns the command line application; cont, when not nil, is the recorded run
// the cookbook command continues or abandons.
func newAppFor(books []cookbooks.Cookbook, stdin io.Reader, stderr io.Writer, cont *continuation) *cli.App {
	a := &cli.App{
		Name:                 "cookbook",
		Usage:                "add, remove, drain and reboot the nodes of Kubernetes clusters on OpenStack",
		UsageText:            "cookbook [global options] COOKBOOK [options]\n   cookbook add-k8s-node --cluster-name toolsbeta --role worker",
		EnableBashCompletion: true,
		Writer:               os.Stdout,
		ErrWriter:            stderr,
		HideVersion:          true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Usage: "configuration `FILE`", Value: config.DefaultPath(), DefaultText: "$COOKBOOK_CONFIG, else ~/.config/cookbook/config.yaml, else /etc/cookbook/config.yaml"},
			&cli.BoolFlag{Name: "dry-run", Aliases: []string{"d"}, Usage: "do every read for real and no write; print what each write would be"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "print debug lines"},
			&cli.BoolFlag{Name: "yes", Aliases: []string{"y"}, Usage: "answer yes to confirmations (without it and without a terminal, a confirmation aborts)"},
			&cli.StringFlag{Name: "state-dir", Usage: "where run records, logs and locks are kept", Value: defaultStateDir(), DefaultText: "$XDG_STATE_HOME/cookbook, else ~/.local/state/cookbook"},
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "how log lines look on stderr: `text` (coloured on a terminal), logfmt or json; the run's log file is always text"},
			outputFlag(),
			taskFlag(),
			&cli.BoolFlag{Name: "version", Usage: "print the version, the commit and the Go version"},
		},
		ExitErrHandler: func(*cli.Context, error) {},
		Action: func(c *cli.Context) error {
			if c.Bool("version") {
				printVersion(c.App.Writer)
				return nil
			}
			if c.Args().Present() {
				return cookbooks.BadInputf("%q is not a cookbook or command (see `cookbook list`)", c.Args().First())
			}
			return cli.ShowAppHelp(c)
		},
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return cookbooks.BadInput(explainUsage("", c.App.Flags, err))
		},
	}
	app := &app{books: books, stdin: stdin, stderr: stderr, cli: a, cont: cont}
	// resume and abandon take the global switches after their name too.
	switches := func() []cli.Flag {
		return []cli.Flag{
			&cli.BoolFlag{Name: "dry-run", Aliases: []string{"d"}, Usage: "rehearse: every read for real, no write, the run file untouched"},
			&cli.BoolFlag{Name: "yes", Aliases: []string{"y"}, Usage: "same as the global --yes"},
			&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "same as the global --verbose"},
			outputFlag(),
			taskFlag(),
		}
	}
	a.Commands = []*cli.Command{
		{Name: "list", Usage: "list the cookbooks", Action: app.list},
		{Name: "completion", Usage: "print the shell completion script (bash, zsh or fish)", ArgsUsage: "SHELL", Action: completion},
		{Name: "man", Usage: "print the manual page cookbook(1) in roff", Hidden: true, Action: manPage},
		{Name: "runs", Usage: "list recent runs", ArgsUsage: " ", Action: app.runs,
			Flags: []cli.Flag{&cli.IntFlag{Name: "limit", Value: 20, Usage: "show at most `N` runs"}, outputFlag()},
			Subcommands: []*cli.Command{
				{Name: "show", Usage: "print every step of a run with status, times and error (--follow: and its log as it is written, until the run ends)", ArgsUsage: "ID", Action: app.show, Flags: []cli.Flag{
					outputFlag(),
					&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "follow the run's log from another pane or shell until the run ends, then print its steps again"},
				}},
			}},
		{Name: "resume", Usage: "continue a run that failed or was interrupted (with --dry-run: rehearse it)", ArgsUsage: "ID", Action: app.resume, Flags: switches()},
		{Name: "abandon", Usage: "give a run up: undo what its steps declare undoable, release its lock (with --dry-run: print the undo it would run)", ArgsUsage: "ID", Action: app.abandon, Flags: switches()},
	}
	// Usage errors of every command are bad input on one line, as the cookbooks' are.
	var oneLine func(path string, cmds []*cli.Command)
	oneLine = func(path string, cmds []*cli.Command) {
		for _, cmd := range cmds {
			cmd := cmd
			name := strings.TrimSpace(path + " " + cmd.Name)
			cmd.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
				return cookbooks.BadInput(explainUsage(name, cmd.Flags, err))
			}
			oneLine(name, cmd.Subcommands)
		}
	}
	oneLine("", a.Commands)
	for _, cb := range books {
		a.Commands = append(a.Commands, app.command(cb))
	}
	return a
}

type app struct {
	books  []cookbooks.Cookbook
	stdin  io.Reader
	stderr io.Writer
	cli    *cli.App
	cont   *continuation // the run that resume or abandon continues; nil for a new run
}

func defaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "cookbook")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "cookbook-state")
	}
	return filepath.Join(home, ".local", "state", "cookbook")
}

func (a *app) list(c *cli.Context) error {
	w := c.App.Writer
	for _, cb := range a.books {
		fmt.Fprintf(w, "%-20s %s\n", cb.Name, cb.Usage)
	}
	return nil
}

func (a *app) command(cb cookbooks.Cookbook) *cli.Command {
	// Required flags are checked here rather than by urfave/cli, which prints the whole
	// help and exits 1: a missing flag is bad input, one line and exit 2.
	var flags []cli.Flag
	var required []string
	for _, f := range cb.Flags {
		if sf, ok := f.(*cli.StringFlag); ok && sf.Required {
			c := *sf
			c.Required = false
			c.Usage += " (required)"
			required = append(required, c.Name)
			f = &c
		}
		flags = append(flags, f)
	}
	if !cb.ReadOnly {
		flags = append(flags, &cli.BoolFlag{Name: "new", Usage: "start a new run even if an unfinished run of this cookbook exists for the cluster"})
	}
	desc := cb.Usage
	if cb.Example != "" {
		desc += "\n\nExample:\n   " + cb.Example
	}
	// The global switches may also follow the cookbook's name.
	flags = append(flags,
		outputFlag(),
		taskFlag(),
		&cli.BoolFlag{Name: "dry-run", Aliases: []string{"d"}, Usage: "same as the global --dry-run"},
		&cli.BoolFlag{Name: "yes", Aliases: []string{"y"}, Usage: "same as the global --yes"},
		&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "same as the global --verbose"},
	)
	return &cli.Command{
		Name:        cb.Name,
		Usage:       cb.Usage,
		Description: desc,
		Flags:       flags,
		Action: func(c *cli.Context) error {
			var missing []string
			for _, name := range required {
				if !c.IsSet(name) {
					missing = append(missing, "--"+name)
				}
			}
			if len(missing) > 0 {
				return cookbooks.BadInputf("missing %s (see `cookbook %s --help`)", strings.Join(missing, ", "), cb.Name)
			}
			return a.run(c, cb)
		},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return cookbooks.BadInput(explainUsage(cb.Name, flags, err))
		},
	}
}

// explainUsage rewrites urfave/cli's usage errors the way cookbook's own read: the flag
// with its two dashes, the bad value, and what was expected.
func explainUsage(command string, flags []cli.Flag, err error) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return fmt.Errorf("unknown flag --%s (see `%s --help`)", name, strings.TrimSpace("cookbook "+command))
	}
	value, rest, ok := strings.Cut(strings.TrimPrefix(msg, "invalid value "), " for flag -")
	if !strings.HasPrefix(msg, "invalid value ") || !ok {
		return err
	}
	name, _, _ := strings.Cut(rest, ":")
	for _, f := range flags {
		if !slices.Contains(f.Names(), name) {
			continue
		}
		switch f.(type) {
		case *cli.DurationFlag:
			return fmt.Errorf("--%s: %s is not a duration (expected one such as 90s, 10m or 1h30m)", name, value)
		case *cli.IntFlag, *cli.UintFlag, *cli.Int64Flag:
			return fmt.Errorf("--%s: %s is not a whole number", name, value)
		}
	}
	return err
}

// switchOn reports whether a boolean switch was given, before or after the cookbook name.
func switchOn(c *cli.Context, name string) bool {
	for _, cc := range c.Lineage() {
		if cc.Command != nil || cc.App != nil {
			if cc.IsSet(name) && cc.Bool(name) {
				return true
			}
		}
	}
	return false
}

// recordArgs returns the flags given to a cookbook, to be replayed by resume. A list flag
// (given several times) is recorded as a JSON array.
func recordArgs(c *cli.Context, cb cookbooks.Cookbook) map[string]string {
	args := map[string]string{}
	for _, f := range cb.Flags {
		name := f.Names()[0]
		if !c.IsSet(name) {
			continue
		}
		if _, ok := f.(*cli.StringSliceFlag); ok {
			data, _ := json.Marshal(c.StringSlice(name)) // a []string always marshals
			args[name] = string(data)
			continue
		}
		args[name] = fmt.Sprint(c.Value(name))
	}
	return args
}

// replayArgs returns the command line of recorded flags, sorted; with the cookbook's
// flags, a list flag is given once per recorded value, as it was.
func replayArgs(args map[string]string, flags ...cli.Flag) []string {
	list := map[string]bool{}
	for _, f := range flags {
		if _, ok := f.(*cli.StringSliceFlag); ok {
			list[f.Names()[0]] = true
		}
	}
	var out []string
	for k, v := range args {
		var values []string
		if list[k] && json.Unmarshal([]byte(v), &values) == nil {
			for _, one := range values {
				out = append(out, "--"+k+"="+one)
			}
			continue
		}
		out = append(out, "--"+k+"="+v)
	}
	sort.Strings(out)
	return out
}

func holder() state.Holder {
	h := state.Holder{PID: os.Getpid()}
	if u, err := user.Current(); err == nil {
		h.User = u.Username
	}
	h.Host = hostname()
	return h
}

// job is a cookbook prepared for one invocation: its flags read, its input checked.
type job struct {
	*cookbooks.Job
	cb      cookbooks.Cookbook
	env     *cookbooks.Env
	termLog slog.Handler      // the terminal's log handler
	args    map[string]string // the cookbook's flags as given
	task    string            // --task-id
	out     io.Writer         // stdout: --output json goes there
}

// close stops what the job's Plan started for the run, once its steps have ended.
func (j *job) close() {
	if j.Close != nil {
		j.Close()
	}
}

// run runs a cookbook invocation: it prepares the job and hands it to what this
// invocation is: a rehearsal of a recorded run, a dry-run or read-only cookbook (nothing
// recorded), or a recorded run (new, resumed or abandoned).
func (a *app) run(c *cli.Context, cb cookbooks.Cookbook) error {
	ctx := c.Context
	dry := switchOn(c, "dry-run")
	if c.Args().Present() {
		return cookbooks.BadInputf("unexpected argument %q (cookbook %s takes only flags; see cookbook %s --help)", c.Args().First(), cb.Name, cb.Name)
	}
	stateDir := c.String("state-dir")
	if err := state.CheckDir(stateDir); err != nil {
		return cookbooks.BadInput(err)
	}
	output, err := outputOf(c)
	if err != nil {
		return err
	}
	task, err := taskOf(c)
	if err != nil {
		return err
	}
	if err := checkLogFormat(c.String("log-format")); err != nil {
		return cookbooks.BadInput(err)
	}
	termLog := newLogger(a.stderr, switchOn(c, "verbose"), false, c.String("log-format"))
	var logger = slog.New(termLog)
	env := &cookbooks.Env{
		ConfigPath: c.String("config"),
		StateDir:   stateDir,
		DryRun:     dry,
		Yes:        switchOn(c, "yes"),
		Output:     output,
		Log:        logger,
		Gate:       &dryrun.Gate{DryRun: dry, Log: logger},
	}
	env.Ask = func(question string) (bool, error) {
		t := newTerminal(a.stdin, a.stderr)
		if t == nil {
			return false, fmt.Errorf("%s: no terminal to confirm on; pass --yes to confirm", question)
		}
		return t.Confirm(question), nil
	}
	prepared, err := cb.Prepare(c, env)
	if err != nil {
		return err
	}
	j := &job{Job: prepared, cb: cb, env: env, termLog: termLog, args: recordArgs(c, cb), out: c.App.Writer, task: task}
	if j.ClaimJob != "" {
		own := ""
		if a.cont != nil {
			own = a.cont.run.ID
		}
		env.Others = othersOf(env, j.Cluster, j.ClaimJob, own)
	}
	if j.Check != nil && a.cont == nil {
		if err := j.Check(ctx); err != nil {
			return notStarted(ctx, j.Cluster, err)
		}
	}
	if dry {
		// Said once; every write is then logged as "DRY-RUN: would ...".
		logger.Info("dry-run: every read for real, no write")
	}
	switch {
	case a.cont != nil && dry:
		return a.rehearse(ctx, j, a.cont)
	case cb.ReadOnly || dry:
		return a.unrecorded(ctx, j)
	case a.cont != nil:
		return a.recorded(ctx, c, j, a.cont.run)
	default:
		return a.recorded(ctx, c, j, nil)
	}
}

// unrecorded runs a read-only cookbook or a dry-run: no lock, no state file, no log file.
func (a *app) unrecorded(ctx context.Context, j *job) error {
	logger, dry := j.env.Log, j.env.DryRun
	run := &state.Run{ID: "dry-run", Cookbook: j.cb.Name, Cluster: j.Cluster, Args: j.args, DryRun: true, Holder: holder(), StartedAt: time.Now()}
	r := &pipeline.Runner{Log: logger}
	steps, err := r.Plan(ctx, run, j.Plan)
	defer j.close()
	if err != nil {
		return planRefusal(err)
	}
	if dry {
		for i, s := range steps {
			logger.Debug("plan", "n", i+1, "step", s.Name)
		}
	}
	var plan *planRecorder
	if dry && j.env.Output == "json" {
		plan = &planRecorder{gate: j.env.Gate}
		steps = plan.wrap(steps)
	}
	err = r.Run(ctx, run, steps)
	if plan != nil {
		if werr := writeJSON(j.out, plan.plan(run, nil, false)); werr != nil {
			return errors.Join(err, werr)
		}
	}
	if err != nil {
		return err
	}
	if dry {
		p, skipped := j.env.Gate.Counts()
		logger.Info("dry-run finished: nothing was changed", "writes-skipped", skipped, "writes-made", p)
	}
	return nil
}

// recorded runs a job that writes: a new run (recorded is nil), or the resume or abandon
// of the recorded run. It holds the cluster's lock, saves the run after every step and
// logs to the run's log file as well as the terminal.
func (a *app) recorded(ctx context.Context, c *cli.Context, j *job, recorded *state.Run) error {
	stateDir := j.env.StateDir
	store := &state.Store{Dir: stateDir}
	locks := &lock.Files{Dir: filepath.Join(stateDir, "locks")}
	isNew := recorded == nil
	run := recorded
	if isNew {
		run = &state.Run{
			ID:        state.NewID(time.Now()),
			Cookbook:  j.cb.Name,
			Cluster:   j.Cluster,
			Args:      recordArgs(c, j.cb),
			StartedAt: time.Now(),
			Status:    state.Running,
		}
	}
	// A chunk's claim of the cluster's lock: recorded by its first start, taken again
	// by its resumes.
	claim, err := claimOf(ctx, j, run, isNew)
	if err != nil {
		return notStarted(ctx, j.Cluster, err)
	}
	if j.ClaimJob != "" {
		j.env.Others = othersOf(j.env, j.Cluster, j.ClaimJob, run.ID)
	}
	// A lease cluster's lock and records are shared with the other operator hosts.
	var sh *shared
	if cl, err := j.env.Cluster(j.Cluster); err == nil {
		if sh, err = sharedOf(cl); err != nil {
			return err
		}
	}
	if isNew {
		// Checked again under the lock below; refused here too, so that a refusal
		// creates no lock file.
		if err := a.refuseUnfinished(c, store, j.cb, j.Cluster, claim); err != nil {
			return err
		}
		// The confirmation's question (its reads may refuse the run) and the answer come
		// before the lock: a refusal or a "no" leaves no lock file and no Lease write. A
		// lock held by another run is said first, not after a question it makes moot.
		if j.Confirm != nil {
			me := lock.Holder{RunID: run.ID, Claim: claim}
			if err := locks.Held(j.Cluster, me); err != nil {
				return err
			}
			if sh != nil {
				if err := sh.leases.Held(ctx, j.Cluster, me); err != nil {
					return err
				}
			}
			q, err := j.Confirm(ctx)
			if err != nil {
				return notStarted(ctx, j.Cluster, err)
			}
			if err := a.confirm(j.env, q); err != nil {
				return err
			}
		}
	}
	run.Holder = holder()
	if j.task != "" {
		run.TaskID = j.task // a resume may name the task; else the recorded one stays
	}
	lh := lock.Holder{RunID: run.ID, Cookbook: j.cb.Name, User: run.Holder.User, Host: run.Holder.Host, PID: run.Holder.PID, StartedAt: time.Now(), Claim: claim}
	// The flock of this host's state dir is always taken: `runs` tells a live run of
	// this host from a dead one by it.
	l, prev, err := locks.Lock(ctx, j.Cluster, lh)
	if err != nil {
		return err
	}
	defer l.Unlock()
	if prev != nil {
		j.env.Log.Warn("took over the lock of a run whose process is gone", "cluster", j.Cluster, "previous", prev.String())
	}
	var hold func() error
	if sh != nil {
		ll, prev, err := sh.leases.Lock(ctx, j.Cluster, lh)
		var held *lock.HeldError
		switch {
		case errors.As(err, &held):
			return err
		case err != nil && isNew:
			return notStarted(ctx, j.Cluster, err)
		case err != nil:
			return err
		}
		defer func() {
			if err := ll.Unlock(); err != nil {
				j.env.Log.Warn("could not release the cluster's lease; it expires by itself", "err", err)
			}
		}()
		if prev != nil {
			j.env.Log.Warn("took over the cluster's lease from a run that stopped renewing it", "cluster", j.Cluster,
				"lease", sh.leases.Namespace+"/"+sh.leases.Name, "previous", prev.String())
		}
		hold = ll.(*lock.LeaseLock).Err
	}
	if isNew {
		if err := a.refuseUnfinished(c, store, j.cb, j.Cluster, claim); err != nil {
			return err
		}
	}

	// The run is saved (and copied to the cluster) once its plan is made and valid: a
	// plan that cannot run leaves no run record.
	if err := os.MkdirAll(filepath.Dir(store.LogPath(run.ID)), 0o700); err != nil {
		return fmt.Errorf("open run log: %w", err)
	}
	logFile, err := os.OpenFile(store.LogPath(run.ID), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("open run log: %w", err)
	}
	defer logFile.Close()
	// The run id is said when the run starts and ends, not on every line.
	logger := slog.New(slog.NewMultiHandler(j.termLog, newLogger(logFile, true, true, "text")))
	j.env.Log = logger
	j.env.Gate.Log = logger
	if cfg, err := j.env.Config(); err == nil {
		j.env.Audit = &audit.Sink{Command: cfg.Audit.Command, File: cfg.Audit.File, Log: logger}
		if run.TaskID != "" {
			j.env.Audit.Suffix = " (" + run.TaskID + ")"
		}
	}
	runner := &pipeline.Runner{Store: store, Log: logger, Hold: hold}
	if t := newTerminal(a.stdin, a.stderr); t != nil {
		runner.Prompt = t
	}
	// The plan, the steps and the progress ticker share the runner's values: one lock
	// guards them and every save of the run. Nothing is saved while the plan is made.
	steps, err := runner.Plan(ctx, run, j.Plan)
	defer j.close()
	if err != nil {
		if isNew {
			// Nothing was done: the run never started, and must not block the next
			// attempt as an unfinished run would.
			_ = os.Remove(store.Path(run.ID))
			_ = os.Remove(store.LogPath(run.ID))
			if ctx.Err() != nil {
				return fmt.Errorf("stopped before the first step; nothing was recorded: %w", pipeline.ErrInterrupted)
			}
			return notStarted(ctx, j.Cluster, planRefusal(err))
		}
		if sh != nil {
			store.Copy = sh.copier(logger, hold, store.LogPath(run.ID))
		}
		run.Status = state.Failed
		run.Error = "plan: " + err.Error()
		if serr := store.Save(run); serr != nil {
			logger.Error("cannot save the failed run", "err", serr)
		}
		return a.failed(run, fmt.Errorf("plan: %w", err))
	}
	if sh != nil {
		store.Copy = sh.copier(logger, hold, store.LogPath(run.ID))
		defer sh.prune(logger)
	}
	if err := store.Save(run); err != nil {
		return err
	}

	// The team's log gets a START and an END line per run, as the admin log expects.
	what := fmt.Sprintf("cookbook %s %s", j.cb.Name, argString(run.Args))
	switch {
	case a.cont != nil && a.cont.abandon:
		what = "abandon of " + what
	case !isNew:
		what = "resume of " + what
	}
	j.env.Audit.Bookend(ctx, fmt.Sprintf("START - %s (run %s)", strings.TrimSpace(what), run.ID))
	end := func(err error) error {
		result := "PASS"
		if err != nil {
			result = "FAIL"
		}
		// Sent also when the run was interrupted: with a context of its own.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		j.env.Audit.Bookend(actx, fmt.Sprintf("END (%s) - %s (run %s, exit_code=%d)", result, strings.TrimSpace(what), run.ID, exitCode(err)))
		return err
	}

	switch {
	case a.cont != nil && a.cont.abandon:
		if _, err := runner.Abandon(ctx, run, steps); err != nil {
			return end(fmt.Errorf("abandon run %s: %w", run.ID, err))
		}
		logger.Info("run abandoned", "run", run.ID, "cookbook", j.cb.Name, "cluster", j.Cluster)
		return end(nil)
	case isNew:
		logger.Info("starting", "run", run.ID, "cookbook", j.cb.Name, "cluster", j.Cluster, "log", store.LogPath(run.ID))
	default:
		logger.Info("resuming", "run", run.ID, "cookbook", j.cb.Name, "cluster", j.Cluster, "at", currentStep(run))
	}
	if err := runner.Run(ctx, run, steps); err != nil {
		var pause *pipeline.PauseError
		if errors.As(err, &pause) {
			// Stopped on purpose (a canary): exit 0, and say how to go on.
			logger.Info("paused", "run", run.ID, "cookbook", j.cb.Name, "cluster", j.Cluster, "took", time.Since(run.StartedAt).Round(time.Second))
			fmt.Fprintf(a.stderr, "cookbook: run %s paused: %s; continue the same plan with: cookbook resume %s   (or give up with: cookbook abandon %s)\n", run.ID, pause.Reason, run.ID, run.ID)
			return end(nil)
		}
		return end(a.failed(run, err))
	}
	logger.Info("finished", "run", run.ID, "cookbook", j.cb.Name, "cluster", j.Cluster, "took", time.Since(run.StartedAt).Round(time.Second))
	return end(nil)
}

// planRefusal marks a plan that cannot run (a step name used twice: a cookbook's bug,
// not a state of the cluster) as refused input: exit 2, and nothing was recorded, so
// running it again gives the same refusal. Other errors are returned as they are.
func planRefusal(err error) error {
	var pe *pipeline.PlanError
	if !errors.As(err, &pe) {
		return err
	}
	return cookbooks.BadInput(fmt.Errorf("plan: %w (the cookbook's plan cannot run; nothing was recorded)", err))
}

// notStarted explains why a new run failed before its first step: an input error as it
// is, else what it could not reach (the cloud or the cluster's Kubernetes API), named
// from the error. Nothing was recorded, so the same command can simply be run again.
func notStarted(ctx context.Context, cluster string, err error) error {
	var in *cookbooks.InputError
	if errors.As(err, &in) {
		return err
	}
	if ctx.Err() != nil {
		// A signal while the cloud or the cluster was being read: exit at once (130).
		return fmt.Errorf("stopped before the first step; nothing was recorded: %w", pipeline.ErrInterrupted)
	}
	what := ""
	var ue *url.Error
	var ne net.Error
	switch {
	case errors.As(err, &ue):
		what = "the cloud"
		host := ue.URL
		if u, perr := url.Parse(ue.URL); perr == nil {
			host = u.Host
			if p := u.Path; p == "/api" || p == "/apis" || p == "/version" || strings.HasPrefix(p, "/api/") || strings.HasPrefix(p, "/apis/") {
				what = "the Kubernetes API of cluster " + cluster
			}
		}
		what += " at " + host
	case strings.Contains(err.Error(), "authenticate to cloud"):
		what = "the cloud"
	case errors.As(err, &ne), strings.Contains(err.Error(), "connection refused"), strings.Contains(err.Error(), "no such host"):
		what = "the cloud or the cluster"
	}
	if what == "" {
		return fmt.Errorf("could not start (nothing was recorded; run the same command again when this is fixed): %w", err)
	}
	return fmt.Errorf("could not reach %s (nothing was recorded; run the same command again when it answers): %w", what, err)
}

func currentStep(run *state.Run) string {
	if s := run.Current(); s != nil {
		return s.Name
	}
	return "end"
}

// failed prints what failed, where, and how to go on; the returned error carries the code.
func (a *app) failed(run *state.Run, err error) error {
	what := "failed"
	if errors.Is(err, pipeline.ErrInterrupted) {
		what = "was interrupted"
	}
	fmt.Fprintf(a.stderr, "cookbook: run %s %s at step %s: %v\n", run.ID, what, currentStep(run), err)
	fmt.Fprintf(a.stderr, "cookbook: the state is saved; continue with: cookbook resume %s   (or give up with: cookbook abandon %s)\n", run.ID, run.ID)
	return &shownError{err: err}
}

// holds reports whether run is one of hs.
func holds(hs []lock.Holder, run string) bool {
	for _, h := range hs {
		if h.RunID == run {
			return true
		}
	}
	return false
}

// keyClaim is where a run records its claim of the cluster's lock (a chunk's).
const keyClaim = "lock/claim"

// recordedClaim is the claim run recorded; nil if none.
func recordedClaim(run *state.Run) *lock.Claim {
	var cl lock.Claim
	if data, ok := run.Values[keyClaim]; !ok || json.Unmarshal(data, &cl) != nil {
		return nil
	}
	return &cl
}

// claimOf returns the run's claim of the cluster's lock, nil for a job that holds it
// alone: a new run's is read from the cluster and recorded; a resumed run takes the
// recorded one again (none recorded: it holds the lock alone).
func claimOf(ctx context.Context, j *job, run *state.Run, isNew bool) (*lock.Claim, error) {
	if j.Claim == nil {
		return nil, nil
	}
	if !isNew {
		if rc := recordedClaim(run); rc != nil {
			return j.Claim(ctx, rc)
		}
		return nil, nil
	}
	cl, err := j.Claim(ctx, nil)
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(cl)
	if err != nil {
		return nil, err
	}
	if run.Values == nil {
		run.Values = map[string]json.RawMessage{}
	}
	run.Values[keyClaim] = data
	return cl, nil
}

// othersOf returns the Env.Others of a run of claimJob on cluster (own is its id on a
// resume): the nodes of the other live holders of the cluster's lock with the same job,
// on this host (flock) and, for a lease cluster, on every host.
func othersOf(env *cookbooks.Env, cluster, claimJob, own string) func(ctx context.Context) []string {
	return func(ctx context.Context) []string {
		hs := (&lock.Files{Dir: filepath.Join(env.StateDir, "locks")}).Holders(cluster)
		if cl, err := env.Cluster(cluster); err == nil {
			if sh, err := sharedOf(cl); err == nil && sh != nil {
				all, err := sh.leases.Holders(ctx)
				if err != nil {
					env.Log.Warn("could not read the cluster's lease for the other chunks' nodes", "err", err)
				}
				for _, e := range all {
					if e.Live {
						hs = append(hs, e.Holder)
					}
				}
			}
		}
		var out []string
		for _, h := range hs {
			if h.RunID != own && h.Claim != nil && h.Claim.Job == claimJob {
				out = append(out, h.Claim.Nodes...)
			}
		}
		return out
	}
}

func (a *app) refuseUnfinished(c *cli.Context, store *state.Store, cb cookbooks.Cookbook, cluster string, claim *lock.Claim) error {
	runs, _ := store.List()
	for _, r := range runs {
		if r.Cookbook != cb.Name || r.Cluster != cluster || !r.Resumable() {
			continue
		}
		if other := recordedClaim(r); claim != nil && other != nil && claim.Shares(other) {
			continue // another chunk of the same job, on other nodes
		}
		if holds((&lock.Files{Dir: filepath.Join(store.Dir, "locks")}).Holders(cluster), r.ID) {
			// A live run: not to be resumed or passed by --new; the cluster's lock
			// refuses this one naming it (exit 3).
			continue
		}
		if c.Bool("new") {
			slog.Default().Debug("ignoring unfinished run", "run", r.ID)
			continue
		}
		return cookbooks.BadInputf("cluster %s has an unfinished %s run %s (status %s at step %s): continue it with `cookbook resume %s`, give it up with `cookbook abandon %s`, or pass --new to start another",
			cluster, cb.Name, r.ID, r.Status, currentStep(r), r.ID, r.ID)
	}
	return nil
}

func (a *app) confirm(env *cookbooks.Env, question string) error {
	if question == "" || env.Yes {
		return nil
	}
	t := newTerminal(a.stdin, a.stderr)
	if t == nil {
		return cookbooks.BadInputf("%s: no terminal to confirm on; pass --yes to confirm", question)
	}
	if !t.Confirm(question) {
		return cookbooks.BadInputf("not confirmed; nothing was changed")
	}
	return nil
}

func (a *app) find(name string) (cookbooks.Cookbook, bool) {
	for _, cb := range a.books {
		if cb.Name == name {
			return cb, true
		}
	}
	return cookbooks.Cookbook{}, false
}

// continueRun re-runs the recorded cookbook with its recorded flags and the current
// global flags, continuing the recorded run.
func (a *app) continueRun(c *cli.Context, abandon bool) error {
	id := c.Args().First()
	if id == "" {
		return cookbooks.BadInputf("expected one run id (see `cookbook runs`)")
	}
	if c.Args().Len() > 1 {
		return cookbooks.BadInputf("expected one run id, got %d: %s (see `cookbook runs`)", c.Args().Len(), strings.Join(c.Args().Slice(), " "))
	}
	store, err := openStore(c)
	if err != nil {
		return err
	}
	run, err := findRun(store, c.String("config"), id)
	if err != nil {
		return cookbooks.BadInput(err)
	}
	if !run.Resumable() {
		verb := "resume"
		if abandon {
			verb = "abandon"
		}
		return cookbooks.BadInputf("run %s is %s: nothing to %s", id, run.Status, verb)
	}
	cb, ok := a.find(run.Cookbook)
	if !ok {
		return cookbooks.BadInputf("run %s is of cookbook %q, which this cookbook binary does not have", id, run.Cookbook)
	}
	args := []string{"cookbook", "--config", c.String("config"), "--state-dir", c.String("state-dir")}
	for _, f := range []string{"dry-run", "verbose", "yes"} {
		if switchOn(c, f) {
			args = append(args, "--"+f)
		}
	}
	output, err := outputOf(c)
	if err != nil {
		return err
	}
	args = append(args, "--output", output, "--log-format", c.String("log-format"))
	task, err := taskOf(c)
	if err != nil {
		return err
	}
	if task != "" {
		args = append(args, "--task-id", task)
	}
	args = append(args, cb.Name)
	args = append(args, replayArgs(run.Args, cb.Flags...)...)
	return newAppFor(a.books, a.stdin, a.stderr, &continuation{run: run, abandon: abandon}).RunContext(c.Context, args)
}

// rehearse is `cookbook --dry-run resume|abandon ID`: the recorded run is continued (or
// given up) on a copy, with every read for real and every write logged as
// "DRY-RUN: would ...". The run file, the lock and the log file are not touched.
func (a *app) rehearse(ctx context.Context, j *job, cont *continuation) error {
	run, err := copyRun(cont.run)
	if err != nil {
		return err
	}
	log := j.env.Log
	runner := &pipeline.Runner{Log: log} // no store: nothing is saved
	steps, err := runner.Plan(ctx, run, j.Plan)
	defer j.close()
	if err != nil {
		var pe *pipeline.PlanError
		if errors.As(err, &pe) {
			return planRefusal(err)
		}
		return fmt.Errorf("dry-run of run %s: plan: %w", run.ID, err)
	}
	if j.env.Output == "json" {
		plan := &planRecorder{gate: j.env.Gate}
		steps = plan.wrap(steps)
		defer func() {
			if werr := writeJSON(j.out, plan.plan(run, cont.run, cont.abandon)); werr != nil {
				log.Error("cannot write the plan", "err", werr)
			}
		}()
	}
	if cont.abandon {
		log.Info("DRY-RUN: rehearsing the abandon of run "+run.ID+": the undo of its started steps, last first", "cookbook", run.Cookbook, "cluster", run.Cluster)
		undos, err := runner.Abandon(ctx, run, steps)
		if err != nil {
			return fmt.Errorf("dry-run of the abandon of run %s: %w", run.ID, err)
		}
		if len(undos) == 0 {
			log.Info("DRY-RUN: abandon would undo nothing (no started step has an undo) and mark the run abandoned")
		} else {
			log.Info(fmt.Sprintf("DRY-RUN: abandon would undo %d step(s) and mark the run abandoned: %s", len(undos), strings.Join(undos, ", ")))
		}
	} else {
		log.Info("DRY-RUN: rehearsing the resume of run "+run.ID, "cookbook", run.Cookbook, "cluster", run.Cluster, "at", currentStep(run))
		if err := runner.Run(ctx, run, steps); err != nil {
			return fmt.Errorf("dry-run of the resume of run %s: %w", run.ID, err)
		}
	}
	performed, skipped := j.env.Gate.Counts()
	log.Info("dry-run finished: nothing was changed; run "+run.ID+" is as it was", "writes-skipped", skipped, "writes-made", performed)
	return nil
}

// copyRun returns a deep copy of run, so that a rehearsal cannot change the record.
func copyRun(run *state.Run) (*state.Run, error) {
	data, err := json.Marshal(run)
	if err != nil {
		return nil, fmt.Errorf("copy run %s: %w", run.ID, err)
	}
	var out state.Run
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("copy run %s: %w", run.ID, err)
	}
	return &out, nil
}

// openStore returns the run store of --state-dir, checked before anything is read or
// written: a bad --state-dir is bad input.
func openStore(c *cli.Context) (*state.Store, error) {
	dir := c.String("state-dir")
	if err := state.CheckDir(dir); err != nil {
		return nil, cookbooks.BadInput(err)
	}
	return &state.Store{Dir: dir}, nil
}

func (a *app) resume(c *cli.Context) error  { return a.continueRun(c, false) }
func (a *app) abandon(c *cli.Context) error { return a.continueRun(c, true) }

// argString shows a run's flags as an operator types them: "--force", not "--force=true".
func argString(args map[string]string) string {
	out := replayArgs(args)
	for i, a := range out {
		out[i] = strings.TrimSuffix(a, "=true")
	}
	return strings.Join(out, " ")
}
