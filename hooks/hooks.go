// Package hooks runs the site's configured commands at named points of a node's life
// (after it is created, after it joins, before a drain, before and after its removal):
// the inventory edits and certificate cleanups a site needs besides OpenStack and
// Kubernetes. A hook is an argv list with placeholders, run on the operator's host or,
// with `on`, over SSH on a named host; each is a pipeline step of its own, so a hook that
// finished is not run again when the run is resumed (one killed while it ran is run again:
// hooks must be safe to repeat). Every hook goes through the dry-run gate.
package hooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/dryrun"
	"example.com/cookbook/ssh"
)

// The points hooks run at, as the configuration names them.
const (
	AfterCreate  = "afterCreate"
	AfterJoin    = "afterJoin"
	BeforeDrain  = "beforeDrain"
	BeforeRemove = "beforeRemove"
	AfterRemove  = "afterRemove"
)

// StderrLines is how many of the last lines of a failed hook's stderr its error shows.
const StderrLines = 20

// Node is what a hook's placeholders name.
type Node struct {
	Hostname, FQDN, Role, Cluster, ServerID, Address string
}

func (n Node) vars() map[string]string {
	return map[string]string{
		"hostname": n.Hostname, "fqdn": n.FQDN, "role": n.Role, "cluster": n.Cluster,
		"server_id": n.ServerID, "address": n.Address,
	}
}

// Expand returns the hook's argv and host with the node's values in place of the
// placeholders. An unknown placeholder is an error naming it.
func Expand(h config.Hook, n Node) (argv []string, on string, err error) {
	if len(h.Command) == 0 || h.Command[0] == "" {
		return nil, "", errors.New("hook without a command")
	}
	vars := n.vars()
	for _, a := range h.Command {
		x, err := config.ExpandTemplate(a, vars)
		if err != nil {
			return nil, "", fmt.Errorf("hook %s: %w", ssh.Quote(h.Command), err)
		}
		argv = append(argv, x)
	}
	if on, err = config.ExpandTemplate(h.On, vars); err != nil {
		return nil, "", fmt.Errorf("hook %s: on: %w", ssh.Quote(h.Command), err)
	}
	return argv, on, nil
}

// Remote runs a command on a host: *ssh.Client.
type Remote interface {
	Run(ctx context.Context, host string, cmd ssh.Command) (ssh.Result, error)
}

var _ Remote = (*ssh.Client)(nil)

// Runner runs hooks.
type Runner struct {
	// Gate is where local hooks pass; nil runs them. Hooks with `on` pass the SSH
	// client's own gate (ssh.Client.Run).
	Gate *dryrun.Gate
	// SSH runs the hooks with `on`; nil makes them fail.
	SSH Remote
	// Log receives the hooks' output (debug); nil discards.
	Log *slog.Logger
	// Env is the environment local hooks start from; os.Environ() if nil.
	Env []string
}

func (r *Runner) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

// Run runs one hook for node n of run runID, at point (for messages). A local hook gets
// COOKBOOK_RUN_ID, COOKBOOK_CLUSTER and COOKBOOK_NODE in its environment; a remote one gets
// them through env(1) on the host. A non-zero exit is an error with the last StderrLines
// lines of stderr; the hook is killed (its whole process group) after its timeout
// (config.DefaultHookTimeout if zero).
func (r *Runner) Run(ctx context.Context, runID, point string, h config.Hook, n Node) error {
	argv, on, err := Expand(h, n)
	if err != nil {
		return err
	}
	timeout := h.Timeout.Or(config.DefaultHookTimeout)
	env := []string{"COOKBOOK_RUN_ID=" + runID, "COOKBOOK_CLUSTER=" + n.Cluster, "COOKBOOK_NODE=" + n.Hostname}
	if on != "" {
		if r.SSH == nil {
			return fmt.Errorf("%s hook on %s: no SSH client to run it with", point, on)
		}
		// ssh.Client.Run passes its dry-run gate: "run on HOST: env ... argv".
		_, err := r.SSH.Run(ctx, on, ssh.Command{Argv: append(append([]string{"env"}, env...), argv...), Timeout: timeout})
		if err != nil {
			return fmt.Errorf("%s hook: %w", point, err)
		}
		return nil
	}
	action := fmt.Sprintf("run %s hook: %s", point, ssh.Quote(argv))
	return r.Gate.Write(ctx, action, func(ctx context.Context) error {
		return r.local(ctx, point, argv, append(r.environ(), env...), timeout)
	}, nil, "node", n.Hostname)
}

func (r *Runner) environ() []string {
	if r.Env != nil {
		return append([]string(nil), r.Env...)
	}
	return os.Environ()
}

func (r *Runner) local(ctx context.Context, point string, argv, env []string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// A group of its own, killed whole on timeout: a shell's children go too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	log := r.log()
	for _, line := range splitLines(stdout.String()) {
		log.DebugContext(ctx, "hook: "+line, "stream", "stdout")
	}
	for _, line := range splitLines(stderr.String()) {
		log.DebugContext(ctx, "hook: "+line, "stream", "stderr")
	}
	shown := ssh.Quote(argv)
	switch {
	case err == nil:
		return nil
	case ctx.Err() == context.DeadlineExceeded:
		return fmt.Errorf("%s hook `%s`: killed after its timeout of %s%s", point, shown, timeout.Round(time.Millisecond), tailText(stderr.String()))
	case ctx.Err() != nil:
		return fmt.Errorf("%s hook `%s`: %w", point, shown, ctx.Err())
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return fmt.Errorf("%s hook `%s` exited with status %d after %s%s", point, shown, exit.ExitCode(), time.Since(start).Round(time.Millisecond), tailText(stderr.String()))
	}
	return fmt.Errorf("%s hook `%s`: %w", point, shown, err)
}

func splitLines(s string) []string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// tailText is ": " and the last StderrLines lines of stderr joined by " | ", or "".
func tailText(stderr string) string {
	lines := splitLines(strings.TrimSpace(stderr))
	if len(lines) == 0 {
		return ""
	}
	if len(lines) > StderrLines {
		lines = lines[len(lines)-StderrLines:]
	}
	return ": " + strings.Join(lines, " | ")
}

// StepName is the stable name of the i-th hook (from 1) of a point: "hook-after-create-1".
func StepName(point string, i int) string {
	var b strings.Builder
	b.WriteString("hook-")
	for _, c := range point {
		if c >= 'A' && c <= 'Z' {
			b.WriteByte('-')
			c += 'a' - 'A'
		}
		b.WriteRune(c)
	}
	fmt.Fprintf(&b, "-%d", i)
	return b.String()
}

// Steps returns one pipeline step per hook of a point, named StepName(point, i). node
// gives the node's values when the step runs (a server id or address that earlier steps
// recorded). The steps have no undo: a hook's effect is the site's.
func (r *Runner) Steps(point string, hooks []config.Hook, node func(*pipeline.Values) (Node, error)) []pipeline.Step {
	var steps []pipeline.Step
	for i, h := range hooks {
		steps = append(steps, pipeline.Step{
			Name: StepName(point, i+1),
			Desc: func(v *pipeline.Values) string {
				n, err := node(v)
				if err != nil {
					return fmt.Sprintf("run %s hook %s", point, ssh.Quote(h.Command))
				}
				argv, on, err := Expand(h, n)
				if err != nil {
					return fmt.Sprintf("run %s hook %s", point, ssh.Quote(h.Command))
				}
				where := "here"
				if on != "" {
					where = "on " + on
				}
				return fmt.Sprintf("run %s hook %s: %s", point, where, ssh.Quote(argv))
			},
			Do: func(ctx context.Context, v *pipeline.Values) error {
				n, err := node(v)
				if err != nil {
					return err
				}
				return r.Run(ctx, v.RunID(), point, h, n)
			},
		})
	}
	return steps
}
