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
}

// oldNode is a server to replace and the name of the image it runs.
type oldNode struct {
	Server openstack.Server `json:"server"`
	Image  string           `json:"image"`
}

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
			&cli.StringFlag{Name: "role", Usage: "the node role (worker, worker-nfs, ingress; not control yet)", Required: true},
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
}

func prepareReplace(c *cli.Context, env *Env) (*Job, error) {
	cl, err := env.Cluster(c.String("cluster-name"))
	if err != nil {
		return nil, err
	}
	roleName := c.String("role")
	role, err := cl.Role(roleName)
	if err != nil {
		return nil, BadInput(err)
	}
	if role.ControlPlane {
		return nil, BadInputf("--role %s: replacing control nodes needs the etcd membership and health checks of issue 14 (not done yet); replace workers only", roleName)
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
	if r.drain, err = drainOptions(c); err != nil {
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
// nothing, or several things, is bad input.
func (r *replacer) check(ctx context.Context) error {
	if err := r.clients(ctx); err != nil {
		return err
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
	var old []oldNode
	for _, s := range sortedServers(chosen) {
		if s.ImageID == p.ImageID {
			p.Current = append(p.Current, s.Name)
			continue
		}
		old = append(old, oldNode{Server: s, Image: imageName(s.ImageID)})
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
	for i, b := range p.Batches {
		total += len(b)
		var olds []string
		for _, o := range b {
			olds = append(olds, fmt.Sprintf("%s (%s)", o.Server.Name, o.Image))
		}
		r.env.Log.Info(fmt.Sprintf("plan: batch %d/%d: replace %s with new %s node(s) on %s", i+1, len(p.Batches), strings.Join(olds, ", "), r.roleName, p.Image))
	}
	for _, n := range p.Current {
		r.env.Log.Info(fmt.Sprintf("plan: %s is on %s already: left alone", n, p.Image))
	}
	parts := [][]pipeline.Step{pipeline.One(auditStepNamed("audit-start", r.env, fmt.Sprintf("replace-k8s-nodes of %s started by %s: %d %s node(s) to %s in %d batch(es)", r.cl.Name, operator(), total, r.roleName, p.Image, len(p.Batches))))}
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
	did := "replaced"
	if r.keep {
		did = "replaced (old nodes kept, cordoned and drained)"
	}
	parts = append(parts, pipeline.One(auditStep(r.env, fmt.Sprintf("replace-k8s-nodes of %s finished: %d %s node(s) %s", r.cl.Name, total, r.roleName, did))))
	return pipeline.Steps(parts...), nil
}

func oldNames(b []oldNode) string {
	var n []string
	for _, o := range b {
		n = append(n, o.Server.Name)
	}
	return strings.Join(n, ", ")
}

// batchSteps is one batch: pick-names, the add sets of its new nodes side by side, the
// health gate, then the removal (or, with --keep-old, the cordon and drain) of its old
// nodes side by side, and one audit line per replacement.
func (r *replacer) batchSteps(tag string, spec addSpec, p replacePlan, b []oldNode) ([]pipeline.Step, error) {
	adds := make([]pipeline.Set, len(b))
	removes := make([]pipeline.Set, len(b))
	for i, o := range b {
		node := o.Server.Name
		steps, _ := addNode(r.c, newScope(node), spec, r.timeout)
		adds[i] = pipeline.Set{Scope: newScope(node), Title: "new node for " + node, Steps: steps}
		var rm []pipeline.Step
		if r.keep {
			rm = ifInCluster(r.c.kube, node, cordonDrain(r.c.kube, pipeline.Scope(node), node, r.drain))
		} else {
			rm = removeNode(r.c, pipeline.Scope(node), o.Server, removeOpts{Drain: r.drain, Timeout: r.timeout})
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
	k := r.c.kube
	health := pipeline.Step{Name: "health-gate", Desc: pipeline.Text("wait until the cluster is healthy with the new nodes (for 2s without a break)"), Do: func(ctx context.Context, v *pipeline.Values) error {
		gate := k8sops.GateOptions{Timeout: r.timeout}
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
		}
		return nil
	}}
	return pipeline.Steps(pipeline.One(pick), add, pipeline.One(health), remove, pipeline.One(audit)), nil
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
