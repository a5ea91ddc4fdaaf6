package cookbooks

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/openstack"
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
			&cli.BoolFlag{Name: "force-removal", Usage: "remove even the last node of a role, or a control node leaving fewer than three (never one that would break etcd's quorum)"},
			&cli.BoolFlag{Name: "ignore-drain-failure", Usage: "remove the node even if its drain fails (what the Toolforge cookbook's --force does; --force here is kubectl's bare-pod flag)"},
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Minute, Usage: "how long deleting the server may take"},
		}, drainFlags()...),
		Prepare: func(c *cli.Context, env *Env) (*Job, error) {
			cl, err := env.Cluster(c.String("cluster-name"))
			if err != nil {
				return nil, err
			}
			roleName, role, err := roleFlag(c, cl)
			if err != nil {
				return nil, err
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
			opts, err := drainOptions(c, cl)
			if err != nil {
				return nil, err
			}
			timeout, err := positiveDuration(c, "timeout", 10*time.Minute)
			if err != nil {
				return nil, err
			}
			force, ignoreDrain := c.Bool("force-removal"), c.Bool("ignore-drain-failure")
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
				if role.ControlPlane {
					return etcdRefusal(ctx, cs, victim.Name, true)
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
				steps := pipeline.Group(node, "node "+node, removeNode(cs, pipeline.Scope(node), srv, removeOpts{Drain: opts, Timeout: timeout, IgnoreDrainFailure: ignoreDrain})...)
				role := roleName
				steps = append(steps, auditStep(env, fmt.Sprintf("Removed k8s %s %s from the cluster %s", role, cl.FQDN(node), cl.Name)))
				return steps, nil
			}
			return job, nil
		},
	}
}
