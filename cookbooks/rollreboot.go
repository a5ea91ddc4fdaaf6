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
)

// RollReboot reboots nodes in batches: cordon, drain, reboot (proven), wait Ready,
// uncordon, health gate.
func RollReboot() Cookbook {
	return Cookbook{
		Name:    "roll-reboot",
		Usage:   "reboot nodes in batches: cordon, drain, reboot (proven by a new boot id), wait Ready, uncordon, health gate",
		Example: "cookbook roll-reboot --cluster-name toolsbeta --all-workers --max-unavailable 2",
		Flags: append([]cli.Flag{
			clusterFlag(),
			&cli.BoolFlag{Name: "all", Usage: "every node of the cluster (control nodes last)"},
			&cli.BoolFlag{Name: "all-workers", Usage: "every worker and NFS worker"},
			&cli.BoolFlag{Name: "all-nfs-workers", Usage: "every NFS worker"},
			&cli.StringFlag{Name: "role", Usage: "every node of a role"},
			&cli.StringFlag{Name: "hostname-list", Usage: "these nodes (separated by commas or spaces)"},
			&cli.IntFlag{Name: "max-unavailable", Value: 1, Usage: "nodes taken down at once (counting nodes an administrator cordoned)"},
			&cli.DurationFlag{Name: "settle", Value: 0, Usage: "pause after each batch's health gate"},
			&cli.DurationFlag{Name: "reboot-timeout", Value: 10 * time.Minute, Usage: "how long a node may take to come back"},
			&cli.BoolFlag{Name: "no-hard-reboot-fallback", Usage: "do not hard-reboot through OpenStack when a soft reboot fails"},
			&cli.BoolFlag{Name: "force-uncordon", Usage: "also uncordon nodes an administrator had cordoned before the run"},
			healthWindowFlag(),
		}, drainFlags()...),
		Prepare: prepareRollReboot,
	}
}

type roller struct {
	env     *Env
	cl      *config.Cluster
	opts    k8sops.DrainOptions
	max     int
	settle  time.Duration
	window  time.Duration
	timeout time.Duration
	hard    bool
	force   bool

	selectNodes func(names []string) ([]string, error)
	roll        *rolling
}

func prepareRollReboot(c *cli.Context, env *Env) (*Job, error) {
	cl, err := env.Cluster(c.String("cluster-name"))
	if err != nil {
		return nil, err
	}
	n := 0
	for _, f := range []string{"all", "all-workers", "all-nfs-workers", "role", "hostname-list"} {
		if c.IsSet(f) {
			n++
		}
	}
	if n != 1 {
		return nil, BadInputf("give exactly one of --all, --all-workers, --all-nfs-workers, --role R, --hostname-list H1,H2 (got %d)", n)
	}
	opts, err := drainOptions(c, cl)
	if err != nil {
		return nil, err
	}
	r := &roller{env: env, cl: cl, opts: opts, hard: !c.Bool("no-hard-reboot-fallback"), force: c.Bool("force-uncordon")}
	if r.max, err = positiveInt(c, "max-unavailable"); err != nil {
		return nil, err
	}
	if r.settle, err = nonNegativeDuration(c, "settle", 30*time.Second); err != nil {
		return nil, err
	}
	if r.timeout, err = positiveDuration(c, "reboot-timeout", 10*time.Minute); err != nil {
		return nil, err
	}
	if r.window, err = positiveDuration(c, "health-window", k8sops.DefaultHealthWindow); err != nil {
		return nil, err
	}
	list, err := hostnameList(c, "hostname-list")
	if err != nil {
		return nil, err
	}
	roleName, roleConf, err := roleFlag(c, cl)
	if err != nil {
		return nil, err
	}
	r.selectNodes = func(names []string) ([]string, error) {
		var out []string
		if list != nil {
			have := map[string]bool{}
			for _, n := range names {
				have[n] = true
			}
			for _, h := range list {
				if !have[h] {
					return nil, BadInputf("--hostname-list: %s is not a node of cluster %s", h, cl.Name)
				}
			}
			return list, nil
		}
		for _, n := range names {
			role, _, ok := cl.RoleOf(n)
			switch {
			case c.Bool("all"):
				out = append(out, n)
			case !ok:
			case c.Bool("all-workers") && strings.HasPrefix(role, "worker"):
				out = append(out, n)
			case c.Bool("all-nfs-workers") && role == "worker-nfs":
				out = append(out, n)
			case roleName != "" && roleName == role:
				out = append(out, n)
			}
		}
		if len(out) == 0 {
			sel := "--all"
			switch {
			case c.Bool("all-workers"):
				sel = "--all-workers"
			case c.Bool("all-nfs-workers"):
				sel = "--all-nfs-workers"
			case c.IsSet("role"):
				sel = fmt.Sprintf("--role %s (its nodes are named %s-N)", c.String("role"), roleConf.Prefix)
			}
			return nil, BadInputf("no node of cluster %s matches %s", cl.Name, sel)
		}
		return out, nil
	}
	if err := env.CheckAccess(cl); err != nil {
		return nil, err
	}
	return &Job{Cluster: cl.Name, Plan: r.plan, Close: func() {
		if r.roll != nil {
			r.roll.Close()
		}
	}}, nil
}

// plan is the rolling skeleton with the reboot as its action.
func (r *roller) plan(ctx context.Context, v *pipeline.Values) ([]pipeline.Step, error) {
	roll := &rolling{Env: r.env, Cluster: r.cl, Job: "roll-reboot", Did: "rebooted", Select: r.selectNodes,
		Max: r.max, Settle: r.settle, Timeout: r.timeout, Force: r.force, Drain: r.opts, Gate: k8sops.GateOptions{Window: r.window},
		Action: func(c *clients, s pipeline.Scope, n rollNode) []pipeline.Step {
			return reboot(c, s, knownNode(c, n.Name), rebootOpts{Timeout: r.timeout, HardFallback: r.hard})
		}}
	r.roll = roll
	return roll.Plan(ctx, v)
}
