package cookbooks

import (
	"context"
	"fmt"

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

// wasCordoned records, per node, whether the node was unschedulable before the run
// touched it. Key: "<node>/was-cordoned".
func wasCordoned(node string) pipeline.Key[bool] { return pipeline.Key[bool](node + "/was-cordoned") }

// cordonSteps record whether an administrator had cordoned the node, then cordon it.
// The undo uncordons the node only if this run cordoned it.
func cordonSteps(k *k8sops.Ops, node string) []pipeline.Step {
	return []pipeline.Step{
		{
			Name: "record-cordon-state",
			Desc: pipeline.Textf("record whether %s is already cordoned", node),
			Do: func(ctx context.Context, v *pipeline.Values) error {
				_, ok, err := wasCordoned(node).Lookup(v)
				if err != nil {
					return err
				}
				if ok {
					return nil // recorded before an interruption
				}
				n, err := k.Node(ctx, node)
				if err != nil {
					return err
				}
				if n.Spec.Unschedulable {
					k.Log.Info("node was cordoned before this run: it stays cordoned at the end", "node", node)
				}
				return wasCordoned(node).Set(v, n.Spec.Unschedulable)
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
				was, _, err := wasCordoned(node).Lookup(v)
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

// uncordonStep uncordons the node unless an administrator had cordoned it before the
// run (force overrides that).
func uncordonStep(k *k8sops.Ops, node string, force bool) pipeline.Step {
	return pipeline.Step{
		Name: "uncordon",
		Desc: pipeline.Textf("uncordon %s if this run cordoned it", node),
		Do: func(ctx context.Context, v *pipeline.Values) error {
			was, ok, err := wasCordoned(node).Lookup(v)
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

// drainStep drains the node.
func drainStep(k *k8sops.Ops, node string, opts k8sops.DrainOptions) pipeline.Step {
	return pipeline.Step{
		Name: "drain",
		Desc: pipeline.Textf("drain %s (timeout %s)", node, opts.Timeout),
		Do: func(ctx context.Context, v *pipeline.Values) error {
			return k.Drain(ctx, node, opts)
		},
	}
}

// drainFlags are the flags of every cookbook that drains nodes.
func drainFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "force", Usage: "also evict pods no controller will replace (bare pods)"},
		&cli.BoolFlag{Name: "delete-emptydir-data", Usage: "also evict pods with emptyDir volumes (their data is lost)"},
		&cli.BoolFlag{Name: "disable-eviction", Usage: "delete pods instead of evicting them, bypassing PodDisruptionBudgets (explicit choice)"},
		&cli.IntFlag{Name: "grace-period", Value: -1, Usage: "seconds pods get to terminate; -1 respects each pod's own"},
		&cli.DurationFlag{Name: "drain-timeout", Value: k8sops.DefaultDrainTimeout, Usage: "how long a node's drain may take"},
	}
}

func drainOptions(c *cli.Context) (k8sops.DrainOptions, error) {
	opts := k8sops.DrainOptions{
		Force:              c.Bool("force"),
		DeleteEmptyDirData: c.Bool("delete-emptydir-data"),
		DisableEviction:    c.Bool("disable-eviction"),
	}
	if g := c.Int("grace-period"); g >= 0 {
		gp := int64(g)
		opts.GracePeriodSeconds = &gp
	} else if g != -1 {
		return opts, BadInputf("--grace-period: %d is negative (expected seconds, 0 or more, or -1 for each pod's own)", g)
	}
	var err error
	opts.Timeout, err = positiveDuration(c, "drain-timeout", k8sops.DefaultDrainTimeout)
	return opts, err
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
