package cookbooks

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/openstack"
	"example.com/cookbook/ssh"
)

// keyRemoveServer is the server the removal deletes: "remove/server" (id and name).
const keyRemoveServer = pipeline.Key[openstack.Server]("remove/server")

// RemoveNode drains a node, removes it from the cluster and deletes its server.
func RemoveNode() Cookbook {
	return Cookbook{
		Name:    "remove-k8s-node",
		Usage:   "drain a node, remove it from the cluster and delete its server (the oldest of the role by default)",
		Example: "cookbook remove-k8s-node --cluster-name toolsbeta --role worker-nfs --hostname-to-remove toolsbeta-test-k8s-worker-nfs-1",
		Flags: append([]cli.Flag{
			clusterFlag(),
			&cli.StringFlag{Name: "role", Usage: "the node role", Required: true},
			&cli.StringFlag{Name: "hostname-to-remove", Usage: "the node to remove (default: the oldest of the role, lowest number)"},
			&cli.BoolFlag{Name: "force-removal", Usage: "remove even the last node of a role, or a control node leaving fewer than three"},
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Minute, Usage: "how long deleting the server may take"},
		}, drainFlags()...),
		Prepare: func(c *cli.Context, env *Env) (*Job, error) {
			cl, err := env.Cluster(c.String("cluster-name"))
			if err != nil {
				return nil, err
			}
			roleName := c.String("role")
			role, err := cl.Role(roleName)
			if err != nil {
				return nil, BadInput(err)
			}
			var host string
			if c.IsSet("hostname-to-remove") {
				if host, err = hostnameFlag(c, "hostname-to-remove"); err != nil {
					return nil, err
				}
				if r, _, ok := cl.RoleOf(host); !ok || r != roleName {
					return nil, BadInputf("--hostname-to-remove: %s is not a node of role %s (its names are %s-N)", host, roleName, role.Prefix)
				}
			}
			opts, err := drainOptions(c)
			if err != nil {
				return nil, err
			}
			timeout, err := positiveDuration(c, "timeout", 10*time.Minute)
			if err != nil {
				return nil, err
			}
			force := c.Bool("force-removal")
			var cs *clients
			var victim openstack.Server
			// choose finds the server to remove and checks the role keeps enough nodes.
			choose := func(ctx context.Context) error {
				if cs != nil {
					return nil
				}
				var err error
				if cs, err = newClients(ctx, env, cl); err != nil {
					return err
				}
				list, err := cs.cloud.RoleServers(ctx, role.Prefix)
				if err != nil {
					return err
				}
				if len(list) == 0 {
					return BadInputf("role %s has no server (%s-N)", roleName, role.Prefix)
				}
				victim = list[0]
				if host != "" {
					found := false
					for _, s := range list {
						if s.Name == host {
							victim, found = s, true
						}
					}
					if !found {
						return BadInputf("--hostname-to-remove: no server %s in the cloud", host)
					}
				}
				min := 1
				if role.ControlPlane {
					min = 3
				}
				if len(list)-1 < min && !force {
					return BadInputf("removing %s would leave %d node(s) of role %s (at least %d must remain); pass --force-removal to do it anyway", victim.Name, len(list)-1, roleName, min)
				}
				return nil
			}
			if err := env.CheckAccess(cl); err != nil {
				return nil, err
			}
			job := &Job{Cluster: cl.Name}
			job.Confirm = func(ctx context.Context) (string, error) {
				if err := choose(ctx); err != nil {
					return "", err
				}
				return fmt.Sprintf("Remove node %s (server %s) from cluster %s and delete its server?", victim.Name, victim.ID, cl.Name), nil
			}
			job.Plan = func(ctx context.Context, v *pipeline.Values) ([]pipeline.Step, error) {
				srv, recorded, err := keyRemoveServer.Lookup(v)
				if err != nil {
					return nil, err
				}
				if !recorded {
					if err := choose(ctx); err != nil {
						return nil, err
					}
					srv = victim
					if err := keyRemoveServer.Set(v, srv); err != nil {
						return nil, err
					}
				} else if cs == nil {
					var err error
					if cs, err = newClients(ctx, env, cl); err != nil {
						return nil, err
					}
				}
				node := srv.Name
				k := cs.kube
				// A node that is not (or no longer) in Kubernetes has nothing to drain.
				inK8s := func(ctx context.Context) bool { _, err := k.Node(ctx, node); return err == nil }
				steps := pipeline.Group(node, "node "+node,
					pipeline.Step{Name: "record-cordon-state", Desc: pipeline.Textf("record whether %s is already cordoned", node), Do: func(ctx context.Context, v *pipeline.Values) error {
						if !inK8s(ctx) {
							return pipeline.Skip("node %s is not in the cluster", node)
						}
						return cordonSteps(k, node)[0].Do(ctx, v)
					}},
					pipeline.Step{Name: "cordon", Desc: pipeline.Textf("cordon %s", node), Do: func(ctx context.Context, v *pipeline.Values) error {
						if !inK8s(ctx) {
							return pipeline.Skip("node %s is not in the cluster", node)
						}
						_, err := k.Cordon(ctx, node)
						return err
					}, Undo: cordonSteps(k, node)[1].Undo},
					pipeline.Step{Name: "drain", Desc: pipeline.Textf("drain %s", node), Do: func(ctx context.Context, v *pipeline.Values) error {
						if !inK8s(ctx) {
							return pipeline.Skip("node %s is not in the cluster", node)
						}
						return k.Drain(ctx, node, opts)
					}},
					pipeline.Step{Name: "delete-node", Desc: pipeline.Textf("delete node %s from Kubernetes", node), Do: func(ctx context.Context, v *pipeline.Values) error {
						return k.DeleteNode(ctx, node)
					}},
					pipeline.Step{Name: "kubeadm-reset", Desc: pipeline.Textf("kubeadm reset -f on %s (best effort)", node), Do: func(ctx context.Context, v *pipeline.Values) error {
						host, err := cs.target(ctx, node)
						if err == nil {
							_, err = cs.ssh.Run(ctx, host, ssh.Command{Argv: []string{"kubeadm", "reset", "-f"}, Timeout: 2 * time.Minute})
						}
						if err != nil {
							return pipeline.Skip("kubeadm reset failed (the host may be dead; the server is deleted next): %v", err)
						}
						return nil
					}},
					pipeline.Step{Name: "delete-server", Desc: pipeline.Textf("delete server %s (%s) and wait until it is gone", node, srv.ID), Do: func(ctx context.Context, v *pipeline.Values) error {
						if err := cs.cloud.DeleteServer(ctx, srv.ID, node); err != nil {
							return err
						}
						return cs.cloud.WaitGone(ctx, srv.ID, timeout)
					}},
					pipeline.Step{Name: "forget-host-key", Desc: pipeline.Textf("forget the SSH host key learned for %s", node), Do: func(ctx context.Context, v *pipeline.Values) error {
						// The next server of this name or address has a new key.
						return cs.ssh.Forget(ctx, cs.cl.FQDN(node), srv.Address)
					}},
				)
				role := roleName
				steps = append(steps, auditStep(env, fmt.Sprintf("Removed k8s %s %s from the cluster %s", role, cl.FQDN(node), cl.Name)))
				return steps, nil
			}
			return job, nil
		},
	}
}
