package cookbooks

import (
	"context"
	"time"

	"example.com/cookbook/cookbooks/pipeline"
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
}

// removeNode is the step set that takes the node of server srv out of the cluster and
// deletes the server, its values in scope s: record-cordon-state, cordon, drain (these
// three skip a node that is not, or no longer, in Kubernetes), delete-node,
// kubeadm-reset (best effort: a dead host is logged, not fatal), delete-server (and wait
// until it is gone), forget-host-key (the next server of its name or address has a new
// key).
func removeNode(c *clients, s pipeline.Scope, srv openstack.Server, opts removeOpts) []pipeline.Step {
	node, k := srv.Name, c.kube
	return append(ifInCluster(k, node, cordonDrain(k, s, node, opts.Drain)),
		pipeline.Step{Name: "delete-node", Desc: pipeline.Textf("delete node %s from Kubernetes", node), Do: func(ctx context.Context, v *pipeline.Values) error {
			return k.DeleteNode(ctx, node)
		}},
		pipeline.Step{Name: "kubeadm-reset", Desc: pipeline.Textf("kubeadm reset -f on %s (best effort)", node), Do: func(ctx context.Context, v *pipeline.Values) error {
			host, err := c.target(ctx, node)
			if err == nil {
				_, err = c.ssh.Run(ctx, host, ssh.Command{Argv: []string{"kubeadm", "reset", "-f"}, Timeout: 2 * time.Minute})
			}
			if err != nil {
				return pipeline.Skip("kubeadm reset failed (the host may be dead; the server is deleted next): %v", err)
			}
			return nil
		}},
		pipeline.Step{Name: "delete-server", Desc: pipeline.Textf("delete server %s (%s) and wait until it is gone", node, srv.ID), Do: func(ctx context.Context, v *pipeline.Values) error {
			if err := c.cloud.DeleteServer(ctx, srv.ID, node); err != nil {
				return err
			}
			return c.cloud.WaitGone(ctx, srv.ID, opts.Timeout)
		}},
		pipeline.Step{Name: "forget-host-key", Desc: pipeline.Textf("forget the SSH host key learned for %s", node), Do: func(ctx context.Context, v *pipeline.Values) error {
			return c.ssh.Forget(ctx, c.cl.FQDN(node), srv.Address)
		}},
	)
}
