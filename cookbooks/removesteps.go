package cookbooks

import (
	"context"
	"time"

	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/hooks"
	"example.com/cookbook/k8sops"
	"example.com/cookbook/openstack"
	"example.com/cookbook/ssh"
)

// removeOpts are how a node is removed.
type removeOpts struct {
	// Drain is how its pods are evicted.
	Drain k8sops.DrainOptions
	// Timeout is how long deleting its server may take.
	Timeout time.Duration
	// IgnoreDrainFailure goes on with the removal when the drain fails (the Toolforge
	// cookbook's --force): the failure is a warning and the drain step is skipped.
	IgnoreDrainFailure bool
}

// removeNode is the step set that takes the node of server srv out of the cluster and
// deletes the server, its values in scope s: the beforeRemove hooks, silence (with an
// alertmanager), record-cordon-state, cordon, the beforeDrain hooks, drain (these skip a
// node that is not, or no longer, in Kubernetes), delete-node, kubeadm-reset (best
// effort: a dead host is logged, not fatal), delete-server (and wait until it is gone),
// unsilence, forget-host-key (the next server of its name or address has a new key), the
// afterRemove hooks.
func removeNode(c *clients, s pipeline.Scope, srv openstack.Server, opts removeOpts) []pipeline.Step {
	node, k := srv.Name, c.kube
	role, rc, _ := c.cl.RoleOf(node)
	control := rc != nil && rc.ControlPlane
	// A control node leaves etcd: the other members must be healthy before (its own may
	// be dead), its member is removed from another control node (kubeadm reset, after
	// delete-node, leaves it in), and etcd is healthy without it after.
	nodeName := func(*pipeline.Values) (string, error) { return node, nil }
	var etcdBefore, etcdMember, etcdAfter []pipeline.Step
	if control {
		etcdBefore = pipeline.One(checkEtcd(c, "check-etcd", etcdCheck{Node: nodeName, Unhealthy: true}))
		etcdMember = pipeline.One(removeEtcdMember(c, node))
		etcdAfter = pipeline.One(checkEtcd(c, "check-etcd-after", etcdCheck{Node: nodeName, Gone: true, Wait: opts.Timeout}))
	}
	hn := c.hookNode(node, role, srv.ID, srv.Address)
	hookNode := func(*pipeline.Values) (hooks.Node, error) { return hn, nil }
	drain := cordonDrain(k, s, node, opts.Drain)
	if opts.IgnoreDrainFailure {
		last := &drain[len(drain)-1]
		do := last.Do
		last.Do = func(ctx context.Context, v *pipeline.Values) error {
			err := do(ctx, v)
			if err == nil || ctx.Err() != nil {
				return err
			}
			k.Log.Warn("drain failed; removing the node anyway (--ignore-drain-failure)", "node", node, "err", err)
			return pipeline.Skip("drain failed, ignored (--ignore-drain-failure): %v", err)
		}
	}
	drain = pipeline.Steps(drain[:len(drain)-1], hookSteps(c, role, hooks.BeforeDrain, hookNode), drain[len(drain)-1:])
	return pipeline.Steps(
		etcdBefore,
		hookSteps(c, role, hooks.BeforeRemove, hookNode),
		silence(c, s, node, role, "removal"),
		ifInCluster(k, node, drain),
		[]pipeline.Step{
			{Name: "delete-node", Desc: pipeline.Textf("delete node %s from Kubernetes", node), Do: func(ctx context.Context, v *pipeline.Values) error {
				return k.DeleteNode(ctx, node)
			}},
			{Name: "kubeadm-reset", Desc: pipeline.Textf("kubeadm reset -f on %s (best effort)", node), Do: func(ctx context.Context, v *pipeline.Values) error {
				host, err := c.target(ctx, node)
				if err == nil {
					_, err = c.ssh.Run(ctx, host, ssh.Command{Argv: []string{"kubeadm", "reset", "-f"}, Timeout: 2 * time.Minute})
				}
				if err != nil {
					return pipeline.Skip("kubeadm reset failed (the host may be dead; the server is deleted next): %v", err)
				}
				return nil
			}},
		},
		etcdMember,
		[]pipeline.Step{
			{Name: "delete-server", Desc: pipeline.Textf("delete server %s (%s) and wait until it is gone", node, srv.ID), Do: func(ctx context.Context, v *pipeline.Values) error {
				if err := c.cloud.DeleteServer(ctx, srv.ID, node); err != nil {
					return err
				}
				return c.cloud.WaitGone(ctx, srv.ID, opts.Timeout)
			}},
		},
		etcdAfter,
		unsilence(c, s, node),
		pipeline.One(pipeline.Step{Name: "forget-host-key", Desc: pipeline.Textf("forget the SSH host key learned for %s", node), Do: func(ctx context.Context, v *pipeline.Values) error {
			return c.ssh.Forget(ctx, c.cl.FQDN(node), srv.Address)
		}}),
		hookSteps(c, role, hooks.AfterRemove, hookNode),
	)
}
