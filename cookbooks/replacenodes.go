package cookbooks

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/k8sops"
	"example.com/cookbook/openstack"
)

// keyReplacePlan is the plan of replace-k8s-nodes: which old servers are replaced, in
// which batches, decided once and replayed by a resumed run.
const keyReplacePlan = pipeline.Key[replacePlan]("replace/plan")

// replacePlan is what replace-k8s-nodes decided when the run started.
type replacePlan struct {
	// Image is the new image's name; ImageID its id.
	Image   string `json:"image"`
	ImageID string `json:"imageId"`
	// Batches are the old nodes, at most --max-surge a batch (the canary alone first).
	Batches [][]oldNode `json:"batches"`
	// Current are the listed nodes already on the image, left alone.
	Current []string `json:"current,omitempty"`
	// Kept are old nodes an earlier --keep-old run replaced and kept (cordoned, drained,
	// labelled with their replacement): only removed, unless this run keeps old nodes too.
	Kept []oldNode `json:"kept,omitempty"`
}

// oldNode is a server to replace and the name of the image it runs.
type oldNode struct {
	Server openstack.Server `json:"server"`
	Image  string           `json:"image"`
	// ReplacedBy is, for a kept node, the name of the node that replaced it.
	ReplacedBy string `json:"replacedBy,omitempty"`
}

// labelReplacedBy is the label --keep-old puts on an old node: the name of its new node.
// A later run of replace-k8s-nodes finds kept nodes by it and only removes them.
const labelReplacedBy = "cookbook/replaced-by"

// removeScope is the scope of the removal of a kept old node: "<old>/remove".
func removeScope(old string) pipeline.Scope { return pipeline.Scope(old + "/remove") }

// newScope is the scope of the add set of the node that replaces old: "<old>/new".
func newScope(old string) pipeline.Scope { return pipeline.Scope(old + "/new") }

// ReplaceNodes replaces the nodes of a role by new ones on another image (an OS upgrade).
func ReplaceNodes() Cookbook {
	return Cookbook{
		Name:    "replace-k8s-nodes",
		Usage:   "replace the nodes of a role by new ones on an image (an OS upgrade): add a new node, health gate, then drain and remove an old one",
		Example: "cookbook replace-k8s-nodes --cluster-name toolsbeta --role worker --image debian-13.0-trixie --canary",
		Flags: append([]cli.Flag{
			clusterFlag(),
			&cli.StringFlag{Name: "role", Usage: "the node role (worker, worker-nfs, ingress, control: one at a time, etcd checked around each)", Required: true},
			&cli.StringFlag{Name: "image", Usage: "the new nodes' image, name or id", Required: true},
			&cli.StringFlag{Name: "flavor", Usage: "the new nodes' flavor (default: the role's, else the newest node's)"},
			&cli.StringFlag{Name: "hostname-list", Usage: "replace these nodes (commas or spaces; default: every node of the role not on --image)"},
			&cli.IntFlag{Name: "max-surge", Value: 1, Usage: "replacements in flight at once (new nodes added before old ones go)"},
			&cli.BoolFlag{Name: "canary", Usage: "replace one node, then pause (exit 0); `cookbook resume ID` does the rest"},
			&cli.BoolFlag{Name: "keep-old", Usage: "only cordon and drain the old nodes; do not remove them"},
			&cli.DurationFlag{Name: "timeout", Value: 20 * time.Minute, Usage: "how long each wait (server ACTIVE, SSH, node Ready, health gate, server gone) may take"},
		}, drainFlags()...),
		Prepare: prepareReplace,
	}
}

type replacer struct {
	env            *Env
	cl             *config.Cluster
	roleName       string
	role           *config.Role
	image, flavor  string
	hosts          []string
	surge          int
	canary, keep   bool
	timeout        time.Duration
	drain          k8sops.DrainOptions
	c              *clients
	imageRef       openstack.Ref
	imageRefLooked bool
	progress       *rollProgress
}

// replaceProgress counts replacements: an old node is done when its replacement's audit
// line is sent, in flight once its new node's name is picked.
func replaceProgress(env *Env, p replacePlan, total int) *rollProgress {
	var plan [][]rollNode
	for _, b := range p.Batches {
		var nodes []rollNode
		for _, o := range b {
			nodes = append(nodes, rollNode{Name: o.Server.Name})
		}
		plan = append(plan, nodes)
	}
	return &rollProgress{log: env.Log, total: total, started: time.Now(), nodes: plan,
		inFlight: func(v *pipeline.Values, old string) bool {
			_, ok := addKeysIn(newScope(old)).hostname.Get(v)
			return ok
		}}
}

func prepareReplace(c *cli.Context, env *Env) (*Job, error) {
	cl, err := env.Cluster(c.String("cluster-name"))
	if err != nil {
		return nil, err
	}
	roleName, role, err := roleFlag(c, cl)
	if err != nil {
		return nil, err
	}
	r := &replacer{env: env, cl: cl, roleName: roleName, role: role, image: c.String("image"), flavor: c.String("flavor"),
		canary: c.Bool("canary"), keep: c.Bool("keep-old")}
	if r.image == "" {
		return nil, BadInputf("--image is required (e.g. debian-13.0-trixie)")
	}
	if r.surge, err = positiveInt(c, "max-surge"); err != nil {
		return nil, err
	}
	if r.timeout, err = positiveDuration(c, "timeout", 20*time.Minute); err != nil {
		return nil, err
	}
	if role.ControlPlane {
		if r.keep {
			return nil, BadInputf("--keep-old: role %s is a control role; a kept control node would stay an etcd member (replace control nodes without --keep-old)", roleName)
		}
		if r.surge > 1 {
			// One control node at a time: etcd checked before and after each.
			env.Log.Info(fmt.Sprintf("--max-surge %d: control nodes are replaced one at a time", r.surge), "role", roleName)
			r.surge = 1
		}
	}
	if r.drain, err = drainOptions(c, cl); err != nil {
		return nil, err
	}
	if r.hosts, err = hostnameList(c, "hostname-list"); err != nil {
		return nil, err
	}
	for _, h := range r.hosts {
		if rn, _, ok := cl.RoleOf(h); !ok || rn != roleName {
			return nil, BadInputf("--hostname-list: %s is not a node of role %s (its names are %s-N)", h, roleName, role.Prefix)
		}
	}
	if err := env.CheckAccess(cl); err != nil {
		return nil, err
	}
	return &Job{Cluster: cl.Name, Check: r.check, Plan: r.plan}, nil
}

func (r *replacer) clients(ctx context.Context) error {
	if r.c != nil {
		return nil
	}
	c, err := newClients(ctx, r.env, r.cl)
	if err != nil {
		return err
	}
	r.c = c
	return nil
}

// check looks up --image and --flavor as add-k8s-node does: a name that matches
// nothing, or several things, is bad input. For a control role every etcd member must be
// started and healthy: each replacement adds a control node first (add-k8s-node's
// check-etcd would stop there) and then takes one away (remove-k8s-node's rule).
func (r *replacer) check(ctx context.Context) error {
	if err := r.clients(ctx); err != nil {
		return err
	}
	if r.role.ControlPlane {
		if err := r.etcdRefusal(ctx); err != nil {
			return err
		}
	}
	lookups := []struct {
		flag, ref string
		lookup    func(context.Context, string) (openstack.Ref, error)
	}{{"image", r.image, r.c.cloud.Image}, {"flavor", r.flavor, r.c.cloud.Flavor}}
	for _, f := range lookups {
		if f.ref == "" {
			continue
		}
		ref, err := lookupFlag(ctx, f.flag, f.ref, f.lookup)
		if err != nil {
			return err
		}
		if f.flag == "image" {
			r.imageRef, r.imageRefLooked = ref, true
		}
	}
	return nil
}

// etcdRefusal is bad input unless every etcd member is started and healthy and each
// listed control node could be removed by remove-k8s-node's rule (etcdRefusal).
func (r *replacer) etcdRefusal(ctx context.Context) error {
	if err := etcdUnhealthyRefusal(ctx, r.c, "a control node is replaced"); err != nil {
		return err
	}
	if r.c.externalEtcd() {
		return nil // a control node is no member of an external etcd: no quorum at stake
	}
	for _, h := range r.hosts {
		if err := etcdRefusal(ctx, r.c, h, true); err != nil {
			return err
		}
	}
	return nil
}

// makePlan selects the old nodes (every server of the role not on the image, or the
// listed ones; oldest first) and cuts them into batches.
func (r *replacer) makePlan(ctx context.Context) (replacePlan, error) {
	if !r.imageRefLooked {
		if err := r.check(ctx); err != nil {
			return replacePlan{}, err
		}
	}
	p := replacePlan{Image: r.imageRef.Name, ImageID: r.imageRef.ID}
	list, err := r.c.cloud.RoleServers(ctx, r.role.Prefix)
	if err != nil {
		return p, err
	}
	byName := map[string]openstack.Server{}
	for _, s := range list {
		byName[s.Name] = s
	}
	chosen := list
	if r.hosts != nil {
		chosen = nil
		for _, h := range r.hosts {
			s, ok := byName[h]
			if !ok {
				return p, BadInputf("--hostname-list: no server %s in the cloud", h)
			}
			chosen = append(chosen, s)
		}
	}
	names := map[string]string{}
	imageName := func(id string) string {
		if n, ok := names[id]; ok {
			return n
		}
		n := id
		if ref, err := r.c.cloud.Image(ctx, id); err == nil {
			n = ref.Name
		}
		names[id] = n
		return n
	}
	nodes, err := r.c.kube.Nodes(ctx)
	if err != nil {
		return p, err
	}
	replacedBy := map[string]string{}
	for _, n := range nodes {
		if by := n.Labels[labelReplacedBy]; by != "" && n.Spec.Unschedulable {
			replacedBy[n.Name] = by
		}
	}
	var old []oldNode
	for _, s := range sortedServers(chosen) {
		if s.ImageID == p.ImageID {
			p.Current = append(p.Current, s.Name)
			continue
		}
		o := oldNode{Server: s, Image: imageName(s.ImageID)}
		if by, ok := byName[replacedBy[s.Name]]; ok && by.ImageID == p.ImageID {
			o.ReplacedBy = by.Name
			p.Kept = append(p.Kept, o)
			continue
		}
		old = append(old, o)
	}
	p.Batches = replaceBatches(old, r.surge, r.canary)
	return p, nil
}

// sortedServers orders servers oldest first: by their number (natural order).
func sortedServers(list []openstack.Server) []openstack.Server {
	out := append([]openstack.Server(nil), list...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].Number() < out[j-1].Number(); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// replaceBatches cuts the old nodes into batches of at most surge; with canary the first
// batch is one node alone.
func replaceBatches(old []oldNode, surge int, canary bool) [][]oldNode {
	var out [][]oldNode
	if canary && len(old) > 0 {
		out = append(out, old[:1])
		old = old[1:]
	}
	for len(old) > 0 {
		n := min(surge, len(old))
		out = append(out, old[:n])
		old = old[n:]
	}
	return out
}

func (r *replacer) plan(ctx context.Context, v *pipeline.Values) ([]pipeline.Step, error) {
	if err := r.clients(ctx); err != nil {
		return nil, err
	}
	p, ok, err := keyReplacePlan.Lookup(v)
	if err != nil {
		return nil, err
	}
	if !ok {
		if p, err = r.makePlan(ctx); err != nil {
			return nil, err
		}
		if err := keyReplacePlan.Set(v, p); err != nil {
			return nil, err
		}
	}
	spec, err := decided(r.env.Log, v, keyNodeSpec, newAddSpec(r.roleName, r.role, addOverrides{Flavor: r.flavor, Image: p.Image}),
		fmt.Sprintf("clusters.%s.roles.%s.", r.cl.Name, r.roleName))
	if err != nil {
		return nil, err
	}
	total := 0
	for _, b := range p.Batches {
		total += len(b)
	}
	if err := r.logPlan(ctx, v, spec, p); err != nil {
		return nil, err
	}
	r.progress = replaceProgress(r.env, p, total)
	parts := [][]pipeline.Step{pipeline.One(auditStepNamed("audit-start", r.env, fmt.Sprintf("replace-k8s-nodes of %s started by %s: %d %s node(s) to %s in %d batch(es)", r.cl.Name, operator(), total, r.roleName, p.Image, len(p.Batches))))}
	if len(p.Kept) > 0 && !r.keep {
		steps, err := r.removeKept("remove-kept", p.Kept)
		if err != nil {
			return nil, err
		}
		parts = append(parts, steps)
	}
	for i, b := range p.Batches {
		name := fmt.Sprintf("batch-%d", i+1)
		steps, err := r.batchSteps(name, spec, p, b)
		if err != nil {
			return nil, err
		}
		if r.canary && i == 0 && len(p.Batches) > 1 {
			steps = append(steps, pipeline.Step{Name: "canary-pause", Desc: pipeline.Text("pause after the canary"), Do: func(ctx context.Context, v *pipeline.Values) error {
				if r.env.DryRun {
					r.env.Log.Info("DRY-RUN: the run would pause here, after the canary")
					return nil
				}
				n, _ := addKeysIn(newScope(b[0].Server.Name)).hostname.Get(v)
				return pipeline.Pause("canary: %s replaced %s; check it, then the same plan goes on with %d more node(s)", n, b[0].Server.Name, total-1)
			}})
		}
		parts = append(parts, pipeline.Group(name, fmt.Sprintf("batch %d/%d [%s]", i+1, len(p.Batches), oldNames(b)), steps...))
	}
	if r.keep && total > 0 {
		var kept []oldNode
		for _, b := range p.Batches {
			kept = append(kept, b...)
		}
		pause := pipeline.Step{Name: "keep-old-pause", Desc: pipeline.Text("pause with the old nodes kept, cordoned and drained"), Do: func(ctx context.Context, v *pipeline.Values) error {
			if r.env.DryRun {
				r.env.Log.Info("DRY-RUN: the run would pause here, the old nodes kept")
				return nil
			}
			return pipeline.Pause("--keep-old: %s kept, cordoned and drained, beside their new nodes; compare, then the same plan removes them", oldNames(kept))
		}}
		steps, err := r.removeKept("remove-old", kept)
		if err != nil {
			return nil, err
		}
		parts = append(parts, pipeline.One(pause), steps)
	}
	end := fmt.Sprintf("replace-k8s-nodes of %s finished: %d %s node(s) replaced", r.cl.Name, total, r.roleName)
	if len(p.Kept) > 0 && !r.keep {
		end += fmt.Sprintf(", %d kept by an earlier run removed", len(p.Kept))
	}
	parts = append(parts, pipeline.One(auditStep(r.env, end)))
	if !r.env.DryRun && total > 0 {
		go r.progress.tick(ctx, v)
	}
	return pipeline.Steps(parts...), nil
}

func oldNames(b []oldNode) string {
	var n []string
	for _, o := range b {
		n = append(n, o.Server.Name)
	}
	return strings.Join(n, ", ")
}

// batchSteps is one batch: pick-names, check-quota, the add sets of its new nodes side by
// side, the health gate, then the removal (or, with --keep-old, the label, cordon and
// drain) of its old nodes side by side, and one audit line per replacement.
func (r *replacer) batchSteps(tag string, spec addSpec, p replacePlan, b []oldNode) ([]pipeline.Step, error) {
	adds := make([]pipeline.Set, len(b))
	removes := make([]pipeline.Set, len(b))
	for i, o := range b {
		node := o.Server.Name
		steps, _ := addNode(r.c, newScope(node), spec, r.timeout)
		adds[i] = pipeline.Set{Scope: newScope(node), Title: "new node for " + node, Steps: steps}
		var rm []pipeline.Step
		if r.keep {
			label := pipeline.Step{Name: "label-replaced-by", Desc: pipeline.Textf("label %s %s=<its new node>", node, labelReplacedBy), Do: func(ctx context.Context, v *pipeline.Values) error {
				n, err := addKeysIn(newScope(node)).hostname.Must(v)
				if err != nil {
					return err
				}
				return r.c.kube.ApplyLabels(ctx, node, map[string]string{labelReplacedBy: n})
			}}
			rm = ifInCluster(r.c.kube, node, append([]pipeline.Step{label}, cordonDrain(r.c.kube, pipeline.Scope(node), node, r.drain)...))
		} else {
			rm = removeNode(r.c, pipeline.Scope(node), o.Server, removeOpts{Drain: r.drain, Timeout: r.timeout})
			if r.role.ControlPlane {
				// The add set of the batch has its check-etcd and check-etcd-after too, in
				// the same group: the removal's are named apart.
				for j := range rm {
					switch rm[j].Name {
					case "check-etcd":
						rm[j].Name = "check-etcd-removal"
					case "check-etcd-after":
						rm[j].Name = "check-etcd-after-removal"
					}
				}
			}
		}
		removes[i] = pipeline.Set{Scope: pipeline.Scope(node), Title: "node " + node, Steps: rm}
	}
	add, err := pipeline.Together(tag, adds...)
	if err != nil {
		return nil, err
	}
	remove, err := pipeline.Together(tag, removes...)
	if err != nil {
		return nil, err
	}
	pick := pipeline.Step{Name: "pick-names", Desc: pipeline.Textf("pick the names of %d new %s node(s)", len(b), r.roleName), Do: func(ctx context.Context, v *pipeline.Values) error {
		return r.pickNames(ctx, v, spec, b)
	}}
	quota := pipeline.Step{Name: "check-quota", Desc: pipeline.Textf("check the project's quota has room for %d new server(s)", len(b)), Do: func(ctx context.Context, v *pipeline.Values) error {
		return r.checkQuota(ctx, v, spec, b)
	}}
	k := r.c.kube
	health := pipeline.Step{Name: "health-gate", Desc: pipeline.Text("wait until the cluster is healthy with the new nodes, their pods Running (for 2s without a break)"), Do: func(ctx context.Context, v *pipeline.Values) error {
		gate := k8sops.GateOptions{Timeout: r.timeout}
		for _, o := range b {
			if n, ok := addKeysIn(newScope(o.Server.Name)).hostname.Get(v); ok {
				gate.Handled = append(gate.Handled, n)
			}
		}
		if r.env.DryRun {
			bad, err := k.Health(ctx, gate)
			if err == nil && len(bad) > 0 {
				r.env.Log.Info("DRY-RUN: the health gate would wait on: " + strings.Join(bad, "; "))
			}
			return err
		}
		return k.WaitHealthy(ctx, gate)
	}}
	audit := pipeline.Step{Name: "audit", Desc: pipeline.Textf("tell the team: replaced %s", oldNames(b)), Do: func(ctx context.Context, v *pipeline.Values) error {
		for _, o := range b {
			n, _ := addKeysIn(newScope(o.Server.Name)).hostname.Get(v)
			line := fmt.Sprintf("Replaced %s (%s) with %s (%s)", r.cl.FQDN(o.Server.Name), o.Image, r.cl.FQDN(n), p.Image)
			if r.keep {
				line += "; the old node is kept, cordoned and drained"
			}
			if r.env.DryRun {
				r.env.Gate.Would(ctx, "send audit line: "+line)
				continue
			}
			r.env.Audit.Send(ctx, line)
			if _, ok, err := nodeDone(o.Server.Name).Lookup(v); err != nil {
				return err
			} else if !ok {
				if err := nodeDone(o.Server.Name).Set(v, time.Now()); err != nil {
					return err
				}
			}
			r.progress.finish(o.Server.Name)
		}
		if !r.env.DryRun {
			r.progress.summary(v)
		}
		return nil
	}}
	return pipeline.Steps(pipeline.One(pick), pipeline.One(quota), add, pipeline.One(health), remove, pipeline.One(audit)), nil
}

// pickNames records the names of the batch's new nodes before their add sets run side by
// side (each set's pick-name then keeps the recorded name): the next numbers of the role,
// above both its servers and the names this step recorded before an interruption.
func (r *replacer) pickNames(ctx context.Context, v *pipeline.Values, spec addSpec, b []oldNode) error {
	list, err := r.c.cloud.RoleServers(ctx, spec.Prefix)
	if err != nil {
		return err
	}
	taken := append([]openstack.Server(nil), list...)
	var todo []pipeline.Key[string]
	for _, o := range b {
		k := addKeysIn(newScope(o.Server.Name)).hostname
		n, ok, err := k.Lookup(v)
		if err != nil {
			return err
		}
		if ok {
			taken = append(taken, openstack.Server{Name: n})
			continue
		}
		todo = append(todo, k)
	}
	for _, k := range todo {
		n := openstack.NextName(spec.Prefix, taken)
		if err := k.Set(v, n); err != nil {
			return err
		}
		taken = append(taken, openstack.Server{Name: n})
		r.env.Log.Info("new node name", "name", n)
	}
	return nil
}

// newFlavor is the flavor of the new nodes, as the add sets resolve it: --flavor, else the
// role's, else the newest server's of the role.
func (r *replacer) newFlavor(ctx context.Context, spec addSpec) (openstack.FlavorSize, error) {
	ref := spec.Flavor
	if ref == "" {
		list, err := r.c.cloud.RoleServers(ctx, spec.Prefix)
		if err != nil {
			return openstack.FlavorSize{}, err
		}
		var newest *openstack.Server
		for i := range list {
			if newest == nil || list[i].Created.After(newest.Created) {
				newest = &list[i]
			}
		}
		if newest == nil {
			return openstack.FlavorSize{}, BadInputf("no flavor for role %s: give --flavor or set roles.%s.flavor in the configuration", spec.Role, spec.Role)
		}
		ref = newest.FlavorID
	}
	return r.c.cloud.FlavorSize(ctx, ref)
}

// checkQuota refuses to start the batch's new servers when the project's quota has no
// room for them, naming what is missing. Servers already made (a resumed run) need none.
func (r *replacer) checkQuota(ctx context.Context, v *pipeline.Values, spec addSpec, b []oldNode) error {
	list, err := r.c.cloud.RoleServers(ctx, spec.Prefix)
	if err != nil {
		return err
	}
	exists := map[string]bool{}
	for _, s := range list {
		exists[s.Name] = true
	}
	var todo []string
	for _, o := range b {
		n, err := addKeysIn(newScope(o.Server.Name)).hostname.Must(v)
		if err != nil {
			return err
		}
		if !exists[n] {
			todo = append(todo, n)
		}
	}
	if len(todo) == 0 {
		return pipeline.Skip("the new servers exist already")
	}
	f, err := r.newFlavor(ctx, spec)
	if err != nil {
		return err
	}
	l, err := r.c.cloud.Limits(ctx)
	if err != nil {
		return err
	}
	if err := l.Check(openstack.NeedFor(len(todo), f)); err != nil {
		err = fmt.Errorf("new server(s) %s of flavor %s: %w", strings.Join(todo, ", "), f.Name, err)
		if r.env.DryRun {
			r.env.Log.Warn("DRY-RUN: the run would stop here: " + err.Error())
			return nil
		}
		return err
	}
	return nil
}

// logPlan prints the plan: per batch the old nodes and the names of their new ones (those
// recorded, else the next free numbers), the image and flavor; the nodes left alone; the
// quota the run needs at its peak and what is left now. In dry-run also the pods each old
// node would lose now and the budgets that would block now.
func (r *replacer) logPlan(ctx context.Context, v *pipeline.Values, spec addSpec, p replacePlan) error {
	for _, n := range p.Current {
		r.env.Log.Info(fmt.Sprintf("plan: %s is on %s already: left alone", n, p.Image))
	}
	for _, o := range p.Kept {
		what := "remove it"
		if r.keep {
			what = "left kept (a run without --keep-old removes it)"
		}
		r.env.Log.Info(fmt.Sprintf("plan: %s (%s) was replaced by %s in an earlier --keep-old run: %s", o.Server.Name, o.Image, o.ReplacedBy, what))
	}
	if len(p.Batches) == 0 {
		return nil
	}
	f, err := r.newFlavor(ctx, spec)
	if err != nil {
		return err
	}
	taken, err := r.c.cloud.RoleServers(ctx, spec.Prefix)
	if err != nil {
		return err
	}
	peak, total := 0, 0
	for i, b := range p.Batches {
		var pairs []string
		for _, o := range b {
			n, ok := addKeysIn(newScope(o.Server.Name)).hostname.Get(v)
			if !ok {
				n = openstack.NextName(spec.Prefix, taken)
				taken = append(taken, openstack.Server{Name: n})
			}
			pairs = append(pairs, fmt.Sprintf("%s (%s) -> %s", o.Server.Name, o.Image, n))
		}
		r.env.Log.Info(fmt.Sprintf("plan: batch %d/%d: %s on %s, flavor %s", i+1, len(p.Batches), strings.Join(pairs, ", "), p.Image, f.Name))
		if r.env.DryRun {
			for _, o := range b {
				logDrainPlan(ctx, r.env, r.c.kube, o.Server.Name, r.drain)
			}
		}
		peak, total = max(peak, len(b)), total+len(b)
	}
	if r.keep {
		peak = total
	}
	l, err := r.c.cloud.Limits(ctx)
	if err != nil {
		return err
	}
	need := openstack.NeedFor(peak, f)
	r.env.Log.Info(fmt.Sprintf("plan: quota needed at once: %s (%d new server(s) of flavor %s before old ones go); left now: %s", need, peak, f.Name, l.Left()))
	if err := l.Check(need); err != nil {
		r.env.Log.Warn("plan: " + err.Error())
	}
	return nil
}

// removeKept removes kept old nodes (every remove-k8s-node step), at most --max-surge side
// by side, in groups "<tag>-N", with an audit line per node.
func (r *replacer) removeKept(tag string, kept []oldNode) ([]pipeline.Step, error) {
	var out []pipeline.Step
	for i := 0; i < len(kept); i += r.surge {
		b := kept[i:min(i+r.surge, len(kept))]
		name := fmt.Sprintf("%s-%d", tag, i/r.surge+1)
		sets := make([]pipeline.Set, len(b))
		for j, o := range b {
			sets[j] = pipeline.Set{Scope: removeScope(o.Server.Name), Title: "old node " + o.Server.Name,
				Steps: removeNode(r.c, removeScope(o.Server.Name), o.Server, removeOpts{Drain: r.drain, Timeout: r.timeout})}
		}
		steps, err := pipeline.Together(name, sets...)
		if err != nil {
			return nil, err
		}
		audit := pipeline.Step{Name: "audit", Desc: pipeline.Textf("tell the team: removed %s", oldNames(b)), Do: func(ctx context.Context, v *pipeline.Values) error {
			for _, o := range b {
				by := o.ReplacedBy
				if by == "" {
					by, _ = addKeysIn(newScope(o.Server.Name)).hostname.Get(v)
				}
				line := fmt.Sprintf("Removed %s (%s), kept after its replacement by %s", r.cl.FQDN(o.Server.Name), o.Image, r.cl.FQDN(by))
				if r.env.DryRun {
					r.env.Gate.Would(ctx, "send audit line: "+line)
					continue
				}
				r.env.Audit.Send(ctx, line)
			}
			return nil
		}}
		out = append(out, pipeline.Group(name, fmt.Sprintf("remove the kept old node(s) %s", oldNames(b)), append(steps, audit)...)...)
	}
	return out, nil
}
