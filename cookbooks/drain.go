package cookbooks

import (
	"context"
	"fmt"

	"github.com/urfave/cli/v2"

	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/hooks"
	"example.com/cookbook/k8sops"
)

func clusterFlag() cli.Flag {
	return &cli.StringFlag{Name: "cluster-name", Usage: "the cluster, as named in the configuration", Required: true}
}

// Drain cordons a node and evicts its pods.
func Drain() Cookbook {
	return Cookbook{
		Name:    "drain",
		Usage:   "cordon a node and evict its pods, respecting PodDisruptionBudgets",
		Example: "cookbook drain --cluster-name toolsbeta --hostname-to-drain toolsbeta-test-k8s-worker-nfs-1",
		Flags: append([]cli.Flag{
			clusterFlag(),
			&cli.StringFlag{Name: "hostname-to-drain", Usage: "the node to drain", Required: true},
		}, drainFlags()...),
		Prepare: func(c *cli.Context, env *Env) (*Job, error) {
			cl, err := env.Cluster(c.String("cluster-name"))
			if err != nil {
				return nil, err
			}
			node, err := hostnameFlag(c, "hostname-to-drain")
			if err != nil {
				return nil, err
			}
			opts, err := drainOptions(c)
			if err != nil {
				return nil, err
			}
			// The node's beforeDrain hooks, if any, need the cloud (for {server_id} and
			// {address}) and SSH (for `on:`): only then does drain use them.
			role, _, _ := cl.RoleOf(node)
			withHooks := len(cl.HooksAt(role, hooks.BeforeDrain)) > 0
			check := env.CheckKube
			if withHooks {
				check = env.CheckAccess
			}
			if err := check(cl); err != nil {
				return nil, err
			}
			return &Job{Cluster: cl.Name, Plan: func(ctx context.Context, v *pipeline.Values) ([]pipeline.Step, error) {
				k, err := env.Kube(cl)
				if err != nil {
					return nil, err
				}
				if err := requireNode(ctx, k, node); err != nil {
					return nil, err
				}
				steps := cordonDrain(k, pipeline.Scope(node), node, opts)
				if withHooks {
					c, err := newClients(ctx, env, cl)
					if err != nil {
						return nil, err
					}
					last := len(steps) - 1
					steps = pipeline.Steps(steps[:last], knownHookSteps(c, node, role, hooks.BeforeDrain), steps[last:])
				}
				return pipeline.Steps(
					pipeline.Group(node, "node "+node, steps...),
					pipeline.One(auditStep(env, fmt.Sprintf("Drained k8s node %s of cluster %s", node, cl.Name))),
				), nil
			}}, nil
		},
	}
}

// Cordon marks a node unschedulable.
func Cordon() Cookbook {
	return oneNodeCookbook("cordon", "mark a node unschedulable (new pods are not scheduled there)", "Cordoned",
		func(k *k8sops.Ops, node string) []pipeline.Step { return cordon(k, pipeline.Scope(node), node) })
}

// Uncordon marks a node schedulable again.
func Uncordon() Cookbook {
	return oneNodeCookbook("uncordon", "mark a node schedulable again", "Uncordoned",
		func(k *k8sops.Ops, node string) []pipeline.Step {
			return []pipeline.Step{uncordon(k, pipeline.Scope(node), node, true)}
		})
}

// oneNodeCookbook is a cookbook of --cluster-name and --hostname whose steps act on that
// node, followed by the audit line "<did> k8s node H of cluster C".
func oneNodeCookbook(name, usage, did string, steps func(k *k8sops.Ops, node string) []pipeline.Step) Cookbook {
	return Cookbook{
		Name:    name,
		Usage:   usage,
		Example: fmt.Sprintf("cookbook %s --cluster-name toolsbeta --hostname toolsbeta-test-k8s-worker-nfs-1", name),
		Flags:   []cli.Flag{clusterFlag(), &cli.StringFlag{Name: "hostname", Usage: "the node to " + name, Required: true}},
		Prepare: func(c *cli.Context, env *Env) (*Job, error) {
			cl, err := env.Cluster(c.String("cluster-name"))
			if err != nil {
				return nil, err
			}
			node, err := hostnameFlag(c, "hostname")
			if err != nil {
				return nil, err
			}
			if err := env.CheckKube(cl); err != nil {
				return nil, err
			}
			return &Job{Cluster: cl.Name, Plan: func(ctx context.Context, v *pipeline.Values) ([]pipeline.Step, error) {
				k, err := env.Kube(cl)
				if err != nil {
					return nil, err
				}
				if err := requireNode(ctx, k, node); err != nil {
					return nil, err
				}
				return pipeline.Steps(
					pipeline.Group(node, "node "+node, steps(k, node)...),
					pipeline.One(auditStep(env, fmt.Sprintf("%s k8s node %s of cluster %s", did, node, cl.Name))),
				), nil
			}}, nil
		},
	}
}

// auditStep sends a line to the audit sinks (nothing in dry-run).
func auditStep(env *Env, line string) pipeline.Step { return auditStepNamed("audit", env, line) }

// auditStepNamed is auditStep under another step name.
func auditStepNamed(name string, env *Env, line string) pipeline.Step {
	return pipeline.Step{
		Name: name,
		Desc: pipeline.Text("tell the team: " + line),
		Do: func(ctx context.Context, v *pipeline.Values) error {
			if env.DryRun {
				env.Gate.Would(ctx, "send audit line: "+line)
				return nil
			}
			env.Audit.Send(ctx, line)
			return nil
		},
	}
}
