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

	corev1 "k8s.io/api/core/v1"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/hooks"
	"example.com/cookbook/k8sops"
)

// keyRollPlan is the plan of a rolling job: its batches, decided once and replayed by a
// resumed run.
const keyRollPlan = pipeline.Key[[][]rollNode]("roll/plan")

// nodeDone records when a node of a rolling job was finished: "<node>/done".
func nodeDone(node string) pipeline.Key[time.Time] { return pipeline.Key[time.Time](node + "/done") }

// rolling is the skeleton of every rolling job: it plans batches of the selected nodes
// (at most Max unschedulable at once, counting nodes an administrator cordoned; control
// nodes last and alone), records the plan once (a resumed run replays it), and does each
// batch as one group "batch-N": record-cordon-state, cordon, the beforeDrain hooks, silence,
// drain, the ACTION, wait-ready, uncordon (only what the run cordoned), health-gate,
// unsilence, settle (silences and hooks only where configured). The batch's nodes go
// through each step at once (pipeline.Together): a node that fails fails the step naming
// the node, and a resume redoes only what that node had not finished.
//
// ACTION is a step set, built per node by Action: reboot for roll-reboot; a kubelet
// upgrade or a node replacement for the cookbooks to come.
type rolling struct {
	Env     *Env
	Cluster *config.Cluster
	// Job names the job in audit lines ("roll-reboot"); Did says what it did to each
	// node ("rebooted").
	Job, Did string
	// Select picks the job's nodes from the cluster's node names (sorted).
	Select func(names []string) ([]string, error)
	// Skip, if not nil, looks at each chosen node before the plan is made: a reason
	// leaves the node out (logged, e.g. already upgraded); an error (bad input) refuses
	// the run.
	Skip func(n corev1.Node) (string, error)
	// Action builds the steps done to node n between its drain and its wait-ready, their
	// values in scope s. Every node's set must have the same step names.
	Action func(c *clients, s pipeline.Scope, n rollNode) []pipeline.Step
	// Max is --max-unavailable; Settle the pause after each health gate; Timeout bounds
	// waiting for a node to be Ready and for the health gate; Force uncordons nodes an
	// administrator had cordoned; Drain is how nodes are drained.
	Max     int
	Settle  time.Duration
	Timeout time.Duration
	Force   bool
	Drain   k8sops.DrainOptions
	// Gate configures the health gate (its Window; Handling, Handled and Timeout are set
	// per batch).
	Gate k8sops.GateOptions
	// Clients makes the backends; nil means the cluster's real (or dry-run) ones.
	Clients func(ctx context.Context) (*clients, error)
	// ControlFirst puts the control nodes' batches (one node each) before the others,
	// as a Kubernetes upgrade needs; otherwise they go last.
	ControlFirst bool

	c        *clients
	progress *rollProgress

	watchMu sync.Mutex
	watch   *k8sops.HealthWatch // the health gates' watches, started at the first gate
	closed  bool
}

// healthWatch returns the run's health watch, started by the first gate that asks: one
// set of watches serves every batch.
func (r *rolling) healthWatch(ctx context.Context) (*k8sops.HealthWatch, error) {
	r.watchMu.Lock()
	defer r.watchMu.Unlock()
	if r.closed {
		return nil, fmt.Errorf("health gate: %w", context.Canceled)
	}
	if r.watch == nil {
		w, err := r.c.kube.WatchHealth(ctx)
		if err != nil {
			return nil, err
		}
		r.watch = w
	}
	return r.watch, nil
}

// Close stops the health gate's watches; the job's Close calls it when the run ends.
func (r *rolling) Close() {
	r.watchMu.Lock()
	defer r.watchMu.Unlock()
	r.closed = true
	if r.watch != nil {
		r.watch.Stop()
		r.watch = nil
	}
}

// Plan is the job's Plan.
func (r *rolling) Plan(ctx context.Context, v *pipeline.Values) ([]pipeline.Step, error) {
	var err error
	if r.Clients != nil {
		r.c, err = r.Clients(ctx)
	} else {
		r.c, err = newClients(ctx, r.Env, r.Cluster)
	}
	if err != nil {
		return nil, err
	}
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
	r.progress = &rollProgress{log: r.Env.Log, total: total, started: time.Now()}
	r.logPlan(ctx, plan)
	parts := [][]pipeline.Step{pipeline.One(auditStepNamed("audit-start", r.Env, fmt.Sprintf("%s of %s started by %s: %d node(s) in %d batch(es)", r.Job, r.Cluster.Name, operator(), total, len(plan))))}
	for i, b := range plan {
		name := fmt.Sprintf("batch-%d", i+1)
		title := fmt.Sprintf("batch %d/%d [%s]", i+1, len(plan), batchNames(b))
		steps, err := r.batchSteps(name, b)
		if err != nil {
			return nil, err
		}
		parts = append(parts, pipeline.Group(name, title, steps...))
	}
	parts = append(parts, pipeline.One(auditStep(r.Env, fmt.Sprintf("%s of %s finished: %d node(s) %s", r.Job, r.Cluster.Name, total, r.Did))))
	if !r.Env.DryRun {
		go r.progress.tick(ctx, v)
	}
	return pipeline.Steps(parts...), nil
}

// makePlan reads the nodes and decides the batches.
func (r *rolling) makePlan(ctx context.Context) ([][]rollNode, error) {
	list, err := r.c.kube.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	var names []string
	cordoned := map[string]bool{}
	byName := map[string]corev1.Node{}
	for _, n := range list {
		names = append(names, n.Name)
		cordoned[n.Name] = n.Spec.Unschedulable
		byName[n.Name] = n
	}
	sort.Strings(names)
	chosen, err := r.Select(names)
	if err != nil {
		return nil, err
	}
	in := map[string]bool{}
	var nodes []rollNode
	for _, n := range chosen {
		if r.Skip != nil {
			reason, err := r.Skip(byName[n])
			if err != nil {
				return nil, err
			}
			if reason != "" {
				r.Env.Log.Info(reason)
				continue
			}
		}
		in[n] = true
		role, rc, _ := r.Cluster.RoleOf(n)
		control := rc != nil && rc.ControlPlane
		if control {
			// Taking a control node down stops its etcd member: refused when the others
			// would not be a healthy quorum.
			if err := etcdRefusal(ctx, r.c, n, false); err != nil {
				return nil, err
			}
		}
		nodes = append(nodes, rollNode{Name: n, Role: role, Control: control, Cordoned: cordoned[n]})
	}
	var already []string
	others := r.Env.others(ctx)
	for _, n := range names {
		// The nodes another chunk of the job holds are its own to count.
		if cordoned[n] && !in[n] && !others[n] {
			already = append(already, n)
		}
	}
	plan, err := batches(nodes, r.Max, already)
	if err != nil || !r.ControlFirst {
		return plan, err
	}
	var control, rest [][]rollNode
	for _, b := range plan {
		if len(b) == 1 && b[0].Control {
			control = append(control, b)
		} else {
			rest = append(rest, b)
		}
	}
	return append(control, rest...), nil
}

// logPlan prints the plan; in dry-run also the pods each node would lose and the budgets
// that would block now.
func (r *rolling) logPlan(ctx context.Context, plan [][]rollNode) {
	for i, b := range plan {
		r.Env.Log.Info(fmt.Sprintf("plan: batch %d/%d: %s", i+1, len(plan), batchNames(b)))
		if !r.Env.DryRun {
			continue
		}
		for _, n := range b {
			logDrainPlan(ctx, r.Env, r.c.kube, n.Name, r.Drain, "cordoned-by-admin", n.Cordoned)
		}
	}
}

// logDrainPlan prints what draining the node would do now: the pods it would evict, the
// budgets that would make it wait and what would block it.
func logDrainPlan(ctx context.Context, env *Env, k *k8sops.Ops, node string, opts k8sops.DrainOptions, attrs ...any) {
	p, err := k.PlanDrain(ctx, node, opts)
	if err != nil {
		env.Log.Warn("cannot plan the drain", "node", node, "err", err)
		return
	}
	env.Log.Info(fmt.Sprintf("plan: %s: %d pod(s) to evict", node, len(p.Evict)), attrs...)
	for _, pdb := range p.PDBs {
		if pdb.WouldBlock() {
			env.Log.Info("plan: " + node + ": would wait on " + pdb.String())
		}
	}
	for _, b := range p.Blocking {
		env.Log.Warn("plan: " + node + ": blocks: " + b)
	}
}

// nodeSteps is what a batch does to one of its nodes: cordon, the beforeDrain hooks,
// silence (with an alertmanager), drain, the action, wait Ready, uncordon, each announced
// as a transition when it is done; the drain, the action and wait-ready with the time the
// node itself took (what the batch would take without any overhead). room checks, until
// it once passes for the whole batch, that taking it down keeps within --max-unavailable.
func (r *rolling) nodeSteps(room func(context.Context) error, n rollNode) []pipeline.Step {
	k, s := r.c.kube, pipeline.Scope(n.Name)
	action := r.Action(r.c, s, n)
	uncordonOwn := uncordon(k, s, n.Name, r.Force)
	uncordonOwn.Do = logSkip(r.Env, uncordonOwn.Do)
	drain := cordonDrain(k, s, n.Name, r.Drain)
	if !r.Env.DryRun {
		// The drains read and watch the disruption budgets through the run's one watch
		// of them (the health gate's) rather than each listing and watching them.
		drain[len(drain)-1].Do = func(ctx context.Context, v *pipeline.Values) error {
			w, err := r.healthWatch(ctx)
			if err != nil {
				return err
			}
			return w.Drain(ctx, n.Name, r.Drain)
		}
	}
	steps := pipeline.Steps(drain[:len(drain)-1], knownHookSteps(r.c, n.Name, n.Role, hooks.BeforeDrain), silence(r.c, s, n.Name, n.Role, r.Job), drain[len(drain)-1:],
		action, pipeline.One(waitReady(k, n.Name, r.Timeout)), pipeline.One(uncordonOwn))
	inAction := map[string]bool{}
	for _, st := range action {
		inAction[st.Name] = true
	}
	var took time.Duration // the node's own time in the drain, the action or wait-ready
	for i := range steps {
		st := &steps[i]
		do, label := st.Do, map[string]string{"cordon": "cordoned", "drain": "drained", "wait-ready": "Ready"}[st.Name]
		if len(action) > 0 && st.Name == action[len(action)-1].Name {
			label = r.Did
		}
		timed := st.Name == "drain" || st.Name == "wait-ready" || inAction[st.Name]
		check := st.Name == "cordon"
		st.Do = func(ctx context.Context, v *pipeline.Values) error {
			if check {
				if err := room(ctx); err != nil {
					return err
				}
			}
			begin := time.Now()
			if err := do(ctx, v); err != nil {
				return err
			}
			if timed {
				took += time.Since(begin)
			}
			if label != "" {
				r.progress.transition(n.Name, label, took)
				took = 0
			}
			return nil
		}
	}
	return steps
}

// onceOK returns f run until it first succeeds: callers one at a time, each running f
// again until one gets nil, the later ones then nil without running it. A failure is not
// remembered: after a refusal (or a failed read), the operator's fix and [r]etry at the
// prompt check again.
func onceOK(f func(context.Context) error) func(context.Context) error {
	var mu sync.Mutex
	ok := false
	return func(ctx context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if ok {
			return nil
		}
		err := f(ctx)
		ok = err == nil
		return err
	}
}

// logSkip logs the reason a node's step had nothing to do (the reason names the node),
// and counts the step as done.
func logSkip(env *Env, do pipeline.Func) pipeline.Func {
	return func(ctx context.Context, v *pipeline.Values) error {
		err := do(ctx, v)
		if reason, ok := skipped(err); ok {
			env.Log.Info(reason)
			return nil
		}
		return err
	}
}

func (r *rolling) batchSteps(name string, b []rollNode) ([]pipeline.Step, error) {
	sets := make([]pipeline.Set, len(b))
	room := onceOK(func(ctx context.Context) error { return r.checkRoom(ctx, b) })
	for i, n := range b {
		sets[i] = pipeline.Set{Scope: pipeline.Scope(n.Name), Title: "node " + n.Name, Steps: r.nodeSteps(room, n)}
	}
	steps, err := pipeline.Together(name, sets...)
	if err != nil {
		return nil, err
	}
	var handled []string
	for _, n := range b {
		handled = append(handled, n.Name)
	}
	k := r.c.kube
	window := r.Gate.Window
	if window <= 0 {
		window = k8sops.DefaultHealthWindow
	}
	health := pipeline.Step{Name: "health-gate", Desc: pipeline.Textf("wait until the cluster is healthy for %s without a break", ShortDuration(window)), Do: func(ctx context.Context, v *pipeline.Values) error {
		gate := r.Gate
		gate.Handled, gate.Timeout = handled, r.Timeout
		// The nodes another chunk of the job holds may be NotReady: that chunk's
		// own gate waits for them.
		for n := range r.Env.others(ctx) {
			gate.Handling = append(gate.Handling, n)
		}
		if r.Env.DryRun {
			bad, err := k.Health(ctx, gate)
			if err == nil && len(bad) > 0 {
				r.Env.Log.Info("DRY-RUN: the health gate would wait on: " + strings.Join(bad, "; "))
			}
			return err
		}
		w, err := r.healthWatch(ctx)
		if err != nil {
			return err
		}
		if r.c.ssh != nil {
			// The batch's SSH connections (to its rebooted nodes) are not needed any
			// more: kept to the end, a roll of hundreds of nodes holds one per node.
			_ = r.c.ssh.Close()
		}
		if err := w.Wait(ctx, gate); err != nil {
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
	}}
	settle := pipeline.Step{Name: "settle", Desc: pipeline.Textf("settle for %s", r.Settle), Do: func(ctx context.Context, v *pipeline.Values) error {
		if r.Settle == 0 || r.Env.DryRun {
			return pipeline.Skip("no --settle")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(r.Settle):
			return nil
		}
	}}
	if len(b) == 1 && b[0].Control {
		// A control node's batch (control nodes go alone): etcd healthy before it is
		// taken down and again, with its member, after.
		node := func(*pipeline.Values) (string, error) { return b[0].Name, nil }
		steps = pipeline.Steps(pipeline.One(checkEtcd(r.c, "check-etcd", etcdCheck{Node: node})), steps,
			pipeline.One(checkEtcd(r.c, "check-etcd-after", etcdCheck{Node: node, Member: true, Wait: r.Timeout})))
	}
	return pipeline.Steps(steps, pipeline.One(health), r.unsilence(b), pipeline.One(settle)), nil
}

// unsilence is the batch's step that expires its nodes' silences once the health gate
// passed; none without an alertmanager.
func (r *rolling) unsilence(b []rollNode) []pipeline.Step {
	if r.c.silencer == nil {
		return nil
	}
	return pipeline.One(pipeline.Step{Name: "unsilence", Desc: pipeline.Textf("expire the silences of %s", batchNames(b)), Do: func(ctx context.Context, v *pipeline.Values) error {
		for _, n := range b {
			expire(ctx, r.c, pipeline.In(pipeline.Scope(n.Name), keySilence), v)
		}
		return nil
	}})
}

// checkRoom refuses to take the batch down if that would make more than --max-unavailable
// nodes unschedulable now (an administrator may have cordoned nodes since the plan).
func (r *rolling) checkRoom(ctx context.Context, b []rollNode) error {
	in := map[string]bool{}
	for _, n := range b {
		in[n.Name] = true
	}
	others := r.Env.others(ctx)
	count := func(list []*corev1.Node) []string {
		var who []string
		for _, n := range list {
			// The nodes another chunk of the job holds count against its own
			// --max-unavailable, not this run's: side by side, the cluster's unavailability is
			// the sum of the chunks'.
			if (n.Spec.Unschedulable && !others[n.Name]) || in[n.Name] {
				who = append(who, n.Name)
			}
		}
		sort.Strings(who)
		return who
	}
	if !r.Env.DryRun {
		// The nodes as the run's watch of them has them: no list of every node per
		// batch. Only a batch the watch says is too many is checked with a list (an
		// uncordon of the last batch may not have reached the watch yet).
		w, err := r.healthWatch(ctx)
		if err != nil {
			return err
		}
		if len(count(w.Nodes())) <= r.Max {
			return nil
		}
	}
	nodes, err := r.c.kube.Nodes(ctx)
	if err != nil {
		return err
	}
	list := make([]*corev1.Node, len(nodes))
	for i := range nodes {
		list[i] = &nodes[i]
	}
	if who := count(list); len(who) > r.Max {
		return fmt.Errorf("taking down %s would make %d nodes unschedulable (%s), more than --max-unavailable %d", batchNames(b), len(who), strings.Join(who, ", "), r.Max)
	}
	return nil
}

// rollProgress prints one line per node transition and a summary every 30 seconds.
type rollProgress struct {
	log interface {
		Info(msg string, args ...any)
	}
	every   time.Duration // between summaries; 0 means 30 seconds
	total   int
	started time.Time
	// nodes are the job's nodes and inFlight says whether a node not done is in progress;
	// nil means the recorded rolling plan and its cordon state (replace-k8s-nodes counts
	// its old nodes and their new nodes' recorded names).
	nodes    [][]rollNode
	inFlight func(v *pipeline.Values, node string) bool
}

// transition logs that the node reached state; took, if not zero, is the time the node
// itself spent getting there (its drain, its action, its wait for Ready).
func (p *rollProgress) transition(node, state string, took time.Duration) {
	if took > 0 {
		p.log.Info(fmt.Sprintf("node %s: %s", node, state), "took", took.Round(time.Millisecond))
		return
	}
	p.log.Info(fmt.Sprintf("node %s: %s", node, state))
}

func (p *rollProgress) finish(node string) {
	p.log.Info(fmt.Sprintf("node %s: done", node))
}

// snapshot counts, from the run's values, the nodes done (health gate passed) and in
// progress (cordon state recorded, not done yet), so a resumed run counts right.
func (p *rollProgress) snapshot(v *pipeline.Values, plan [][]rollNode) pipeline.Progress {
	done, inProgress := 0, 0
	var last time.Time
	for _, b := range plan {
		for _, n := range b {
			if t, ok := nodeDone(n.Name).Get(v); ok {
				done++
				if last.IsZero() || t.After(last) {
					last = t
				}
			} else if p.inFlight != nil {
				if p.inFlight(v, n.Name) {
					inProgress++
				}
			} else if _, ok := pipeline.In(pipeline.Scope(n.Name), keyWasCordoned).Get(v); ok {
				inProgress++
			}
		}
	}
	elapsed := time.Since(p.started)
	if done > 0 && last.After(p.started) {
		elapsed = last.Sub(p.started)
	}
	return pipeline.Progress{Total: p.total, Done: done, InProgress: inProgress, Elapsed: elapsed}
}

func (p *rollProgress) summary(v *pipeline.Values) {
	plan := p.nodes
	if plan == nil {
		plan, _ = keyRollPlan.Get(v)
	}
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

// skipped returns the reason of a step's skip.
func skipped(err error) (string, bool) {
	var skip *pipeline.SkipError
	if errors.As(err, &skip) {
		return skip.Reason, true
	}
	return "", false
}
