package cookbooks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/openstack"
)

// keyNodeSpec is what add-k8s-node decided from its flags and the role's configuration,
// recorded when the run is planned; the add step set records its values at the root.
const keyNodeSpec = pipeline.Key[addSpec]("node-spec")

// AddNode creates a server and joins it to the cluster as a node of a role.
func AddNode() Cookbook {
	return Cookbook{
		Name:    "add-k8s-node",
		Usage:   "create a new server of a role and join it to the cluster",
		Example: "cookbook add-k8s-node --cluster-name toolsbeta --role worker",
		Flags: []cli.Flag{
			clusterFlag(),
			&cli.StringFlag{Name: "role", Usage: "the node role, as named in the configuration (worker, worker-nfs, control, ingress)", Required: true},
			&cli.StringFlag{Name: "flavor", Usage: "flavor name or id (default: the role's, else the newest node's)"},
			&cli.StringFlag{Name: "image", Usage: "image name or id (default: the role's, else the newest node's)"},
			&cli.StringFlag{Name: "network", Usage: "network name or id (default: the role's, else the newest node's)"},
			&cli.DurationFlag{Name: "timeout", Value: 20 * time.Minute, Usage: "how long each wait (server ACTIVE, SSH, reboot, node Ready) may take"},
		},
		Prepare: func(c *cli.Context, env *Env) (*Job, error) {
			cl, err := env.Cluster(c.String("cluster-name"))
			if err != nil {
				return nil, err
			}
			roleName, role, err := roleFlag(c, cl)
			if err != nil {
				return nil, err
			}
			timeout, err := positiveDuration(c, "timeout", 20*time.Minute)
			if err != nil {
				return nil, err
			}
			a := &adder{env: env, cl: cl, roleName: roleName, role: role, timeout: timeout,
				flavor: c.String("flavor"), image: c.String("image"), network: c.String("network")}
			if err := env.CheckAccess(cl); err != nil {
				return nil, err
			}
			return &Job{Cluster: cl.Name, Check: a.check, Plan: a.plan}, nil
		},
	}
}

type adder struct {
	env                    *Env
	cl                     *config.Cluster
	roleName               string
	role                   *config.Role
	timeout                time.Duration
	flavor, image, network string
	c                      *clients
}

// lookupFlag looks up the cloud object a flag names: a name that matches nothing, or
// several things, is bad input naming the flag; any other error is not.
func lookupFlag(ctx context.Context, flag, ref string, lookup func(context.Context, string) (openstack.Ref, error)) (openstack.Ref, error) {
	r, err := lookup(ctx, ref)
	var amb *openstack.LookupError
	if errors.As(err, &amb) {
		return r, BadInputf("--%s: %v", flag, err)
	}
	return r, err
}

// check looks up the flavor, image and network given as flags before the run starts: a
// name that matches nothing, or several things, is bad input. For a control role every
// etcd member must be started and healthy (the run's check-etcd step would stop there),
// else the run is refused before anything is recorded or locked.
func (a *adder) check(ctx context.Context) error {
	if a.flavor == "" && a.image == "" && a.network == "" && !a.role.ControlPlane {
		return nil
	}
	if err := a.clients(ctx); err != nil {
		return err
	}
	if a.role.ControlPlane {
		if err := etcdUnhealthyRefusal(ctx, a.c, "a control node is added"); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		flag, ref string
		lookup    func(context.Context, string) (openstack.Ref, error)
	}{{"flavor", a.flavor, a.c.cloud.Flavor}, {"image", a.image, a.c.cloud.Image}, {"network", a.network, a.c.cloud.Network}} {
		if f.ref == "" {
			continue
		}
		if _, err := lookupFlag(ctx, f.flag, f.ref, f.lookup); err != nil {
			return err
		}
	}
	return nil
}

func (a *adder) clients(ctx context.Context) error {
	if a.c != nil {
		return nil
	}
	c, err := newClients(ctx, a.env, a.cl)
	if err != nil {
		return err
	}
	a.c = c
	return nil
}

func (a *adder) plan(ctx context.Context, v *pipeline.Values) ([]pipeline.Step, error) {
	if err := a.clients(ctx); err != nil {
		return nil, err
	}
	spec, err := decided(a.env.Log, v, keyNodeSpec, newAddSpec(a.roleName, a.role, addOverrides{Flavor: a.flavor, Image: a.image, Network: a.network}),
		fmt.Sprintf("clusters.%s.roles.%s.", a.cl.Name, a.roleName))
	if err != nil {
		return nil, err
	}
	steps, name := addNode(a.c, "", spec, a.timeout)
	return append(steps, pipeline.Step{Name: "audit", Desc: pipeline.Text("tell the team"), Do: func(ctx context.Context, v *pipeline.Values) error {
		return auditStep(a.env, fmt.Sprintf("Added a new k8s %s %s to the cluster %s", spec.Role, a.cl.FQDN(name(v)), a.cl.Name)).Do(ctx, v)
	}}), nil
}
