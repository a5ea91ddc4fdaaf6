package cookbooks

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/k8sops"
)

// Kube returns the Kubernetes operations for the cluster, with the run's dry-run gate
// and log.
func (e *Env) Kube(cl *config.Cluster) (*k8sops.Ops, error) {
	c, err := k8sops.NewClient(cl.Kubernetes.Kubeconfig, cl.Kubernetes.Context)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", cl.Name, err)
	}
	return &k8sops.Ops{Client: c, Gate: e.Gate, Log: e.Log}, nil
}

// keyWasCordoned records whether a node was unschedulable before the run touched it, in
// the node's scope: "<node>/was-cordoned".
const keyWasCordoned = pipeline.Key[bool]("was-cordoned")

// cordon is the step set that takes a node out of scheduling: record-cordon-state
// (whether an administrator had cordoned it, recorded in scope s), then cordon. The
// cordon's undo uncordons the node only if this run cordoned it.
func cordon(k *k8sops.Ops, s pipeline.Scope, node string) []pipeline.Step {
	was := pipeline.In(s, keyWasCordoned)
	return []pipeline.Step{
		{
			Name: "record-cordon-state",
			Desc: pipeline.Textf("record whether %s is already cordoned", node),
			Do: func(ctx context.Context, v *pipeline.Values) error {
				_, ok, err := was.Lookup(v)
				if err != nil || ok {
					return err // ok: recorded before an interruption
				}
				n, err := k.Node(ctx, node)
				if err != nil {
					return err
				}
				if n.Spec.Unschedulable {
					k.Log.Info("node was cordoned before this run: it stays cordoned at the end", "node", node)
				}
				return was.Set(v, n.Spec.Unschedulable)
			},
		},
		{
			Name: "cordon",
			Desc: pipeline.Textf("cordon %s", node),
			Do: func(ctx context.Context, v *pipeline.Values) error {
				_, err := k.Cordon(ctx, node)
				return err
			},
			Undo: func(ctx context.Context, v *pipeline.Values) error {
				was, _, err := was.Lookup(v)
				if err != nil {
					return err
				}
				if was {
					k.Log.Info("leaving node cordoned: it was cordoned before the run", "node", node)
					return nil
				}
				return k.Uncordon(ctx, node)
			},
		},
	}
}

// cordonDrain is the step set that empties a node: record-cordon-state, cordon (undone
// on abandon if this run cordoned it), drain. Values in scope s.
func cordonDrain(k *k8sops.Ops, s pipeline.Scope, node string, opts k8sops.DrainOptions) []pipeline.Step {
	return append(cordon(k, s, node), pipeline.Step{
		Name: "drain",
		Desc: pipeline.Textf("drain %s (timeout %s)", node, opts.Timeout),
		Do: func(ctx context.Context, v *pipeline.Values) error {
			return k.Drain(ctx, node, opts)
		},
	})
}

// uncordon is the step that puts a node back into scheduling, unless an administrator had
// cordoned it before the run (as recorded in scope s by cordon; force overrides that).
func uncordon(k *k8sops.Ops, s pipeline.Scope, node string, force bool) pipeline.Step {
	return pipeline.Step{
		Name: "uncordon",
		Desc: pipeline.Textf("uncordon %s if this run cordoned it", node),
		Do: func(ctx context.Context, v *pipeline.Values) error {
			was, ok, err := pipeline.In(s, keyWasCordoned).Lookup(v)
			if err != nil {
				return err
			}
			if ok && was && !force {
				return pipeline.Skip("%s was cordoned before the run; leaving it cordoned (--force-uncordon overrides)", node)
			}
			return k.Uncordon(ctx, node)
		},
	}
}

// waitReady is the step that waits for a node to be Ready. A dry-run, which did not
// reboot or repair anything, does not wait for a node that is not Ready now: it says it
// would.
func waitReady(k *k8sops.Ops, node string, timeout time.Duration) pipeline.Step {
	return pipeline.Step{
		Name: "wait-ready",
		Desc: pipeline.Textf("wait for %s to be Ready", node),
		Do: func(ctx context.Context, v *pipeline.Values) error {
			if k.Gate.Enabled() {
				if n, err := k.Node(ctx, node); err == nil && !k8sops.IsReady(n) {
					k.Gate.Would(ctx, fmt.Sprintf("wait for %s to be Ready (it is not now)", node))
					return nil
				}
			}
			return k.WaitReady(ctx, node, timeout)
		},
	}
}

// ifInCluster makes steps skip when the node is not (or no longer) a Kubernetes node:
// a node being removed may be gone already, and has nothing to cordon or drain then.
func ifInCluster(k *k8sops.Ops, node string, steps []pipeline.Step) []pipeline.Step {
	out := make([]pipeline.Step, len(steps))
	for i, s := range steps {
		do := s.Do
		s.Do = func(ctx context.Context, v *pipeline.Values) error {
			if _, err := k.Node(ctx, node); apierrors.IsNotFound(err) {
				return pipeline.Skip("node %s is not in the cluster", node)
			}
			return do(ctx, v)
		}
		out[i] = s
	}
	return out
}

// drainFlags are the flags of every cookbook that drains nodes. The cluster's drain
// section of the configuration gives their defaults (see drainOptions).
func drainFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "force", Usage: "also evict pods no controller will replace (bare pods) (config: drain.force)"},
		&cli.BoolFlag{Name: "delete-emptydir-data", Usage: "also evict pods with emptyDir volumes (their data is lost) (config: drain.deleteEmptyDirData)"},
		&cli.BoolFlag{Name: "disable-eviction", Usage: "delete pods instead of evicting them, bypassing PodDisruptionBudgets (explicit choice)"},
		&cli.IntFlag{Name: "grace-period", Value: -1, Usage: "seconds pods get to terminate; -1 respects each pod's own (config: drain.gracePeriod)"},
		&cli.DurationFlag{Name: "drain-timeout", Value: k8sops.DefaultDrainTimeout, Usage: "how long a node's drain may take (config: drain.timeout)"},
		&cli.DurationFlag{Name: "skip-wait-for-delete-timeout", Value: k8sops.DefaultSkipWaitForDeleteTimeout,
			Usage: "on a node that is not Ready, stop waiting for pods whose deletion started longer ago than this; 0 waits for every pod (config: drain.skipWaitForDeleteTimeout)"},
	}
}

// drainOptions reads the drain flags; a flag not given takes the cluster's drain default
// from the configuration, if it has one, else the flag's own default.
func drainOptions(c *cli.Context, cl *config.Cluster) (k8sops.DrainOptions, error) {
	d := cl.Drain
	flagOr := func(name string, def *bool) bool {
		if !c.IsSet(name) && def != nil {
			return *def
		}
		return c.Bool(name)
	}
	opts := k8sops.DrainOptions{
		Force:              flagOr("force", d.Force),
		DeleteEmptyDirData: flagOr("delete-emptydir-data", d.DeleteEmptyDirData),
		DisableEviction:    c.Bool("disable-eviction"),
	}
	g := c.Int("grace-period")
	if !c.IsSet("grace-period") && d.GracePeriod != nil {
		g = *d.GracePeriod
	}
	if g >= 0 {
		gp := int64(g)
		opts.GracePeriodSeconds = &gp
	} else if g != -1 {
		return opts, BadInputf("--grace-period: %d is negative (expected seconds, 0 or more, or -1 for each pod's own)", g)
	}
	var err error
	if opts.Timeout, err = positiveDuration(c, "drain-timeout", k8sops.DefaultDrainTimeout); err != nil {
		return opts, err
	}
	if !c.IsSet("drain-timeout") && d.Timeout != nil {
		opts.Timeout = d.Timeout.D()
	}
	if opts.SkipWaitForDeleteTimeout, err = nonNegativeDuration(c, "skip-wait-for-delete-timeout", k8sops.DefaultSkipWaitForDeleteTimeout); err != nil {
		return opts, err
	}
	if !c.IsSet("skip-wait-for-delete-timeout") && d.SkipWaitForDeleteTimeout != nil {
		opts.SkipWaitForDeleteTimeout = d.SkipWaitForDeleteTimeout.D()
	}
	return opts, nil
}

// hostnameFlag reads a hostname flag, validated as an RFC 1123 label.
func hostnameFlag(c *cli.Context, name string) (string, error) {
	h := c.String(name)
	if h == "" {
		return "", BadInputf("--%s is required", name)
	}
	if err := config.CheckHostname(h); err != nil {
		return "", BadInputf("--%s: %w", name, err)
	}
	return h, nil
}

// requireNode checks that the node exists; a missing node is bad input, a cluster that
// cannot be asked is not.
func requireNode(ctx context.Context, k *k8sops.Ops, node string) error {
	_, err := k.Node(ctx, node)
	if apierrors.IsNotFound(err) {
		return BadInputf("no node %s in the cluster", node)
	}
	return err
}
