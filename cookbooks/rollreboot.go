package cookbooks

import (
	"context"
	"errors"
	"fmt"
	"os/user"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/k8sops"
)

// keyRollPlan is the plan of a rolling reboot: its batches, decided once and replayed
// by a resumed run.
const keyRollPlan = pipeline.Key[[][]rollNode]("roll/plan")

// nodeDone records when a node of a rolling job was finished: "<node>/done".
func nodeDone(node string) pipeline.Key[time.Time] { return pipeline.Key[time.Time](node + "/done") }

// RollReboot reboots nodes in batches: cordon, drain, reboot (proven), wait Ready,
// uncordon, health gate.
func RollReboot() Cookbook {
	return Cookbook{
		Name:    "roll-reboot",
		Usage:   "reboot nodes in batches: cordon, drain, reboot (proven by a new boot id), wait Ready, uncordon, health gate",
		Example: "cookbook roll-reboot --cluster-name toolsbeta --all-workers --max-unavailable 2",
		Flags: append([]cli.Flag{
			clusterFlag(),
			&cli.BoolFlag{Name: "all", Usage: "every node of the cluster (control nodes last)"},
			&cli.BoolFlag{Name: "all-workers", Usage: "every worker and NFS worker"},
			&cli.BoolFlag{Name: "all-nfs-workers", Usage: "every NFS worker"},
			&cli.StringFlag{Name: "role", Usage: "every node of a role"},
			&cli.StringFlag{Name: "hostname-list", Usage: "these nodes (separated by commas or spaces)"},
			&cli.IntFlag{Name: "max-unavailable", Value: 1, Usage: "nodes taken down at once (counting nodes an administrator cordoned)"},
			&cli.DurationFlag{Name: "settle", Value: 0, Usage: "pause after each batch's health gate"},
			&cli.DurationFlag{Name: "reboot-timeout", Value: 10 * time.Minute, Usage: "how long a node may take to come back"},
			&cli.BoolFlag{Name: "no-hard-reboot-fallback", Usage: "do not hard-reboot through OpenStack when a soft reboot fails"},
			&cli.BoolFlag{Name: "force-uncordon", Usage: "also uncordon nodes an administrator had cordoned before the run"},
		}, drainFlags()...),
		Prepare: prepareRollReboot,
	}
}

type roller struct {
	env     *Env
	cl      *config.Cluster
	c       *clients
	opts    k8sops.DrainOptions
	max     int
	settle  time.Duration
	timeout time.Duration
	hard    bool
	force   bool

	selectNodes func(names []string) ([]string, error)
	progress    *rollProgress
}

func prepareRollReboot(c *cli.Context, env *Env) (*Job, error) {
	cl, err := env.Cluster(c.String("cluster-name"))
	if err != nil {
		return nil, err
	}
	n := 0
	for _, f := range []string{"all", "all-workers", "all-nfs-workers", "role", "hostname-list"} {
		if c.IsSet(f) {
			n++
		}
	}
	if n != 1 {
		return nil, BadInputf("give exactly one of --all, --all-workers, --all-nfs-workers, --role R, --hostname-list H1,H2 (got %d)", n)
	}
	opts, err := drainOptions(c)
	if err != nil {
		return nil, err
	}
	r := &roller{env: env, cl: cl, opts: opts, hard: !c.Bool("no-hard-reboot-fallback"), force: c.Bool("force-uncordon")}
	if r.max, err = positiveInt(c, "max-unavailable"); err != nil {
		return nil, err
	}
	if r.settle, err = nonNegativeDuration(c, "settle", 30*time.Second); err != nil {
		return nil, err
	}
	if r.timeout, err = positiveDuration(c, "reboot-timeout", 10*time.Minute); err != nil {
		return nil, err
	}
	var list []string
	if c.IsSet("hostname-list") {
		// Commas or spaces (the Toolforge cookbooks take "H1 H2"); an empty item between
		// two commas is a mistake, not nothing.
		for _, item := range strings.Split(c.String("hostname-list"), ",") {
			names := strings.Fields(item)
			if len(names) == 0 {
				names = []string{""}
			}
			for _, h := range names {
				if err := config.CheckHostname(h); err != nil {
					return nil, BadInputf("--hostname-list: %w", err)
				}
				list = append(list, h)
			}
		}
		// The same node twice would land twice in one batch.
		if err := unique("hostname-list", list); err != nil {
			return nil, err
		}
	}
	if c.IsSet("role") {
		if _, err := cl.Role(c.String("role")); err != nil {
			return nil, BadInput(err)
		}
	}
	r.selectNodes = func(names []string) ([]string, error) {
		var out []string
		if list != nil {
			have := map[string]bool{}
			for _, n := range names {
				have[n] = true
			}
			for _, h := range list {
				if !have[h] {
					return nil, BadInputf("--hostname-list: %s is not a node of cluster %s", h, cl.Name)
				}
			}
			return list, nil
		}
		for _, n := range names {
			role, _, ok := cl.RoleOf(n)
			switch {
			case c.Bool("all"):
				out = append(out, n)
			case !ok:
			case c.Bool("all-workers") && strings.HasPrefix(role, "worker"):
				out = append(out, n)
			case c.Bool("all-nfs-workers") && role == "worker-nfs":
				out = append(out, n)
			case c.String("role") == role:
				out = append(out, n)
			}
		}
		if len(out) == 0 {
			sel := "--all"
			switch {
			case c.Bool("all-workers"):
				sel = "--all-workers"
			case c.Bool("all-nfs-workers"):
				sel = "--all-nfs-workers"
			case c.IsSet("role"):
				sel = "--role " + c.String("role")
				if role, err := cl.Role(c.String("role")); err == nil {
					sel += fmt.Sprintf(" (its nodes are named %s-N)", role.Prefix)
				}
			}
			return nil, BadInputf("no node of cluster %s matches %s", cl.Name, sel)
		}
		return out, nil
	}
	if err := env.CheckAccess(cl); err != nil {
		return nil, err
	}
	return &Job{Cluster: cl.Name, Plan: r.plan}, nil
}

func (r *roller) plan(ctx context.Context, v *pipeline.Values) ([]pipeline.Step, error) {
	c, err := newClients(ctx, r.env, r.cl)
	if err != nil {
		return nil, err
	}
	r.c = c
	plan, ok, err := keyRollPlan.Lookup(v)
	if err != nil {
		return nil, err
	}
	if !ok {
		if plan, err = r.makePlan(ctx); err != nil {
			return nil, err
		}
		if err := keyRollPlan.Set(v, plan); err != nil {
			return nil, err
		}
	}
	total := 0
	for _, b := range plan {
		total += len(b)
	}
	r.progress = &rollProgress{log: r.env.Log, total: total, started: time.Now()}
	r.logPlan(ctx, plan)
	parts := [][]pipeline.Step{pipeline.One(auditStepNamed("audit-start", r.env, fmt.Sprintf("roll-reboot of %s started by %s: %d node(s) in %d batch(es)", r.cl.Name, operator(), total, len(plan))))}
	for i, b := range plan {
		name := fmt.Sprintf("batch-%d", i+1)
		title := fmt.Sprintf("batch %d/%d [%s]", i+1, len(plan), batchNames(b))
		parts = append(parts, pipeline.Group(name, title, r.batchSteps(b)...))
	}
	parts = append(parts, pipeline.One(auditStep(r.env, fmt.Sprintf("roll-reboot of %s finished: %d node(s) rebooted", r.cl.Name, total))))
	if !r.env.DryRun {
		go r.progress.tick(ctx, v)
	}
	return pipeline.Steps(parts...), nil
}

// makePlan reads the nodes and decides the batches.
func (r *roller) makePlan(ctx context.Context) ([][]rollNode, error) {
	list, err := r.c.kube.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var names []string
	cordoned := map[string]bool{}
	for _, n := range list.Items {
		names = append(names, n.Name)
		cordoned[n.Name] = n.Spec.Unschedulable
	}
	sort.Strings(names)
	chosen, err := r.selectNodes(names)
	if err != nil {
		return nil, err
	}
	in := map[string]bool{}
	var nodes []rollNode
	for _, n := range chosen {
		in[n] = true
		role, rc, _ := r.cl.RoleOf(n)
		nodes = append(nodes, rollNode{Name: n, Role: role, Control: rc != nil && rc.ControlPlane, Cordoned: cordoned[n]})
	}
	var already []string
	for _, n := range names {
		if cordoned[n] && !in[n] {
			already = append(already, n)
		}
	}
	return batches(nodes, r.max, already)
}

// logPlan prints the plan; in dry-run also the pods each node would lose and the budgets
// that would block now.
func (r *roller) logPlan(ctx context.Context, plan [][]rollNode) {
	for i, b := range plan {
		r.env.Log.Info(fmt.Sprintf("plan: batch %d/%d: %s", i+1, len(plan), batchNames(b)))
		if !r.env.DryRun {
			continue
		}
		for _, n := range b {
			p, err := r.c.kube.PlanDrain(ctx, n.Name, r.opts)
			if err != nil {
				r.env.Log.Warn("cannot plan the drain", "node", n.Name, "err", err)
				continue
			}
			r.env.Log.Info(fmt.Sprintf("plan: %s: %d pod(s) to evict", n.Name, len(p.Evict)), "cordoned-by-admin", n.Cordoned)
			for _, pdb := range p.PDBs {
				if pdb.WouldBlock() {
					r.env.Log.Info("plan: " + n.Name + ": would wait on " + pdb.String())
				}
			}
			for _, b := range p.Blocking {
				r.env.Log.Warn("plan: " + n.Name + ": blocks: " + b)
			}
		}
	}
}

// each runs f for every node of the batch at once and joins the errors.
func each(b []rollNode, f func(n rollNode) error) error {
	errs := make([]error, len(b))
	var wg sync.WaitGroup
	for i, n := range b {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = f(n) }()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (r *roller) batchSteps(b []rollNode) []pipeline.Step {
	k := r.c.kube
	names := batchNames(b)
	return []pipeline.Step{
		{Name: "record-cordon-state", Desc: pipeline.Textf("record whether %s are cordoned", names), Do: func(ctx context.Context, v *pipeline.Values) error {
			r.progress.begin(len(b))
			return each(b, func(n rollNode) error { return cordonSteps(k, n.Name)[0].Do(ctx, v) })
		}},
		{Name: "cordon", Desc: pipeline.Textf("cordon %s", names), Do: func(ctx context.Context, v *pipeline.Values) error {
			if err := r.checkRoom(ctx, b); err != nil {
				return err
			}
			return each(b, func(n rollNode) error {
				_, err := k.Cordon(ctx, n.Name)
				r.progress.transition(n.Name, "cordoned")
				return err
			})
		}, Undo: func(ctx context.Context, v *pipeline.Values) error {
			return each(b, func(n rollNode) error { return cordonSteps(k, n.Name)[1].Undo(ctx, v) })
		}},
		{Name: "drain", Desc: pipeline.Textf("drain %s", names), Do: func(ctx context.Context, v *pipeline.Values) error {
			return each(b, func(n rollNode) error {
				err := k.Drain(ctx, n.Name, r.opts)
				if err == nil {
					r.progress.transition(n.Name, "drained")
				}
				return err
			})
		}},
		{Name: "reboot", Desc: pipeline.Textf("reboot %s, proven by new boot ids", names), Do: func(ctx context.Context, v *pipeline.Values) error {
			return each(b, func(n rollNode) error {
				host, err := r.c.target(ctx, n.Name)
				if err != nil {
					return err
				}
				if err := rebootNode(ctx, r.c, v, n.Name, host, r.timeout, r.hard); err != nil {
					return err
				}
				r.progress.transition(n.Name, "rebooted")
				return nil
			})
		}},
		{Name: "wait-ready", Desc: pipeline.Textf("wait for %s to be Ready", names), Do: func(ctx context.Context, v *pipeline.Values) error {
			return each(b, func(n rollNode) error {
				if err := k.WaitReady(ctx, n.Name, r.timeout); err != nil {
					return err
				}
				r.progress.transition(n.Name, "Ready")
				return nil
			})
		}},
		{Name: "uncordon", Desc: pipeline.Textf("uncordon %s (those this run cordoned)", names), Do: func(ctx context.Context, v *pipeline.Values) error {
			return each(b, func(n rollNode) error {
				err := uncordonStep(k, n.Name, r.force).Do(ctx, v)
				var skip *pipeline.SkipError
				if errors.As(err, &skip) {
					r.env.Log.Info(skip.Reason) // the reason names the node
					return nil
				}
				return err
			})
		}},
		{Name: "health-gate", Desc: pipeline.Text("wait until the cluster is healthy (2 good checks in a row)"), Do: func(ctx context.Context, v *pipeline.Values) error {
			var handled []string
			for _, n := range b {
				handled = append(handled, n.Name)
			}
			if r.env.DryRun {
				bad, err := k.Health(ctx, k8sops.GateOptions{Handled: handled})
				if err == nil && len(bad) > 0 {
					r.env.Log.Info("DRY-RUN: the health gate would wait on: " + strings.Join(bad, "; "))
				}
				return err
			}
			if err := k.WaitHealthy(ctx, k8sops.GateOptions{Handled: handled, Timeout: r.timeout}); err != nil {
				return err
			}
			for _, n := range b {
				_, ok, err := nodeDone(n.Name).Lookup(v)
				if err != nil {
					return err
				}
				if !ok {
					if err := nodeDone(n.Name).Set(v, time.Now()); err != nil {
						return err
					}
				}
				r.progress.finish(n.Name)
			}
			r.progress.summary(v)
			return nil
		}},
		{Name: "settle", Desc: pipeline.Textf("settle for %s", r.settle), Do: func(ctx context.Context, v *pipeline.Values) error {
			if r.settle == 0 || r.env.DryRun {
				return pipeline.Skip("no --settle")
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(r.settle):
				return nil
			}
		}},
	}
}

// checkRoom refuses to take the batch down if that would make more than --max-unavailable
// nodes unschedulable now (an administrator may have cordoned nodes since the plan).
func (r *roller) checkRoom(ctx context.Context, b []rollNode) error {
	list, err := r.c.kube.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	in := map[string]bool{}
	for _, n := range b {
		in[n.Name] = true
	}
	down := 0
	var who []string
	for _, n := range list.Items {
		if n.Spec.Unschedulable || in[n.Name] {
			down++
			who = append(who, n.Name)
		}
	}
	if down > r.max {
		return fmt.Errorf("taking down %s would make %d nodes unschedulable (%s), more than --max-unavailable %d", batchNames(b), down, strings.Join(who, ", "), r.max)
	}
	return nil
}

// rollProgress prints one line per node transition and a summary every 30 seconds.
type rollProgress struct {
	log interface {
		Info(msg string, args ...any)
	}
	every      time.Duration // between summaries; 0 means 30 seconds
	mu         sync.Mutex
	total      int
	done       int
	inProgress int
	started    time.Time
	elapsed    time.Duration
}

func (p *rollProgress) begin(n int) {
	p.mu.Lock()
	p.inProgress = n
	p.mu.Unlock()
}

func (p *rollProgress) transition(node, state string) {
	p.log.Info(fmt.Sprintf("node %s: %s", node, state))
}

func (p *rollProgress) finish(node string) {
	p.mu.Lock()
	if p.inProgress > 0 {
		p.inProgress--
	}
	p.mu.Unlock()
	p.log.Info(fmt.Sprintf("node %s: done", node))
}

func (p *rollProgress) snapshot(v *pipeline.Values, plan [][]rollNode) pipeline.Progress {
	p.mu.Lock()
	defer p.mu.Unlock()
	done := 0
	var first, last time.Time
	for _, b := range plan {
		for _, n := range b {
			if t, ok := nodeDone(n.Name).Get(v); ok {
				done++
				if last.IsZero() || t.After(last) {
					last = t
				}
				if first.IsZero() || t.Before(first) {
					first = t
				}
			}
		}
	}
	elapsed := time.Since(p.started)
	if done > 0 && last.After(p.started) {
		elapsed = last.Sub(p.started)
	}
	return pipeline.Progress{Total: p.total, Done: done, InProgress: p.inProgress, Elapsed: elapsed}
}

func (p *rollProgress) summary(v *pipeline.Values) {
	plan, _ := keyRollPlan.Get(v)
	p.log.Info("progress: " + p.snapshot(v, plan).String())
}

func (p *rollProgress) tick(ctx context.Context, v *pipeline.Values) {
	every := p.every
	if every == 0 {
		every = 30 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.summary(v)
		}
	}
}

// operator is who runs cookbook, for audit lines.
func operator() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "unknown"
}
