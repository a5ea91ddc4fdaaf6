package cookbooks

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/openstack"
	"example.com/cookbook/ssh"
)

// Values recorded by add-k8s-node (keys in the run state).
const (
	keyHostname    = pipeline.Key[string]("hostname")     // the new node's name
	keyFlavor      = pipeline.Key[string]("flavor-id")    // resolved flavor
	keyImage       = pipeline.Key[string]("image-id")     // resolved image
	keyNetwork     = pipeline.Key[string]("network-id")   // resolved network
	keyServerGroup = pipeline.Key[string]("server-group") // server group id ("" for none)
	keyServerID    = pipeline.Key[string]("server-id")    // recorded before any wait
	keyAddress     = pipeline.Key[string]("address")      // the server's address
	keyHostKeys    = pipeline.Key[[]string]("host-keys")  // fingerprints from the console
	keyProvisioned = pipeline.Key[int]("provisioned")     // provisioning commands done
)

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
			roleName := c.String("role")
			role, err := cl.Role(roleName)
			if err != nil {
				return nil, BadInput(err)
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

// check looks up the flavor, image and network given as flags before the run starts: a
// name that matches nothing, or several things, is bad input.
func (a *adder) check(ctx context.Context) error {
	if a.flavor == "" && a.image == "" && a.network == "" {
		return nil
	}
	if err := a.clients(ctx); err != nil {
		return err
	}
	for _, f := range []struct {
		flag, ref string
		lookup    func(context.Context, string) (openstack.Ref, error)
	}{{"flavor", a.flavor, a.c.cloud.Flavor}, {"image", a.image, a.c.cloud.Image}, {"network", a.network, a.c.cloud.Network}} {
		if f.ref == "" {
			continue
		}
		if _, err := f.lookup(ctx, f.ref); err != nil {
			var amb *openstack.LookupError
			if errors.As(err, &amb) {
				return BadInputf("--%s: %v", f.flag, err)
			}
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
	name := func(v *pipeline.Values) string {
		n, _ := keyHostname.Get(v)
		return n
	}
	desc := func(f string) func(*pipeline.Values) string {
		return func(v *pipeline.Values) string { return fmt.Sprintf(f, name(v)) }
	}
	steps := []pipeline.Step{
		{Name: "pick-name", Desc: pipeline.Textf("pick the next name of role %s (%s-N)", a.roleName, a.role.Prefix), Do: a.pickName},
		{Name: "resolve-flavor-image-network", Desc: pipeline.Text("resolve flavor, image and network (flags, else config, else the newest node of the role)"), Do: a.resolve},
		{Name: "ensure-server-group", Desc: pipeline.Textf("ensure server group %s (policy %s)", a.role.ServerGroup.Name, a.role.ServerGroup.Policy), Do: a.ensureGroup},
		{Name: "create-server", Desc: desc("create server %s (or adopt it if it exists)"), Do: a.createServer},
		{Name: "wait-active", Desc: desc("wait for server %s to be ACTIVE"), Do: a.waitActive},
		{Name: "pin-host-key", Desc: desc("pin the SSH host key %s printed on its console"), Do: a.pinHostKey},
		{Name: "wait-ssh", Desc: desc("wait until %s answers SSH"), Do: a.waitSSH},
	}
	if a.role.ExtraStorage != nil {
		steps = append(steps, pipeline.Step{Name: "prepare-storage", Desc: desc("prepare the extra storage of %s"), Do: a.prepareStorage})
	}
	if len(a.role.Provision) > 0 {
		steps = append(steps, pipeline.Step{Name: "provision", Desc: pipeline.Textf("run the %d provisioning command(s) of role %s", len(a.role.Provision), a.roleName), Do: a.provision})
	}
	if a.role.RebootAfterProvision {
		steps = append(steps, rebootStep(a.c, name, a.timeout, true))
	}
	steps = append(steps,
		pipeline.Step{Name: "join", Desc: desc("join %s to the cluster with kubeadm"), Do: a.join},
		pipeline.Step{Name: "wait-node-ready", Desc: desc("wait for node %s to be Ready"), Do: a.waitReady},
		pipeline.Step{Name: "apply-labels-taints", Desc: desc("apply the role's labels and taints to %s"), Do: a.labelsTaints},
		pipeline.Step{Name: "audit", Desc: pipeline.Text("tell the team"), Do: func(ctx context.Context, v *pipeline.Values) error {
			return auditStep(a.env, fmt.Sprintf("Added a new k8s %s %s to the cluster %s", a.roleName, a.cl.FQDN(name(v)), a.cl.Name)).Do(ctx, v)
		}},
	)
	return steps, nil
}

func (a *adder) pickName(ctx context.Context, v *pipeline.Values) error {
	_, ok, err := keyHostname.Lookup(v)
	if err != nil {
		return err
	}
	if ok {
		return nil
	}
	list, err := a.c.cloud.RoleServers(ctx, a.role.Prefix)
	if err != nil {
		return err
	}
	name := openstack.NextName(a.role.Prefix, list)
	a.env.Log.Info("new node name", "name", name, "existing", len(list))
	return keyHostname.Set(v, name)
}

func (a *adder) resolve(ctx context.Context, v *pipeline.Values) error {
	var newest *openstack.Server
	list, err := a.c.cloud.RoleServers(ctx, a.role.Prefix)
	if err != nil {
		return err
	}
	for i := range list {
		if newest == nil || list[i].Created.After(newest.Created) {
			newest = &list[i]
		}
	}
	pickRef := func(what, flag, cfg string, fromNewest func(openstack.Server) string) (string, error) {
		switch {
		case flag != "":
			return flag, nil
		case cfg != "":
			return cfg, nil
		case newest != nil && fromNewest(*newest) != "":
			return fromNewest(*newest), nil
		}
		return "", BadInputf("no %s for role %s: give --%s, set roles.%s.%s in the configuration, or have a node of the role to copy", what, a.roleName, what, a.roleName, what)
	}
	fl, err := pickRef("flavor", a.flavor, a.role.Flavor, func(s openstack.Server) string { return s.FlavorID })
	if err != nil {
		return err
	}
	im, err := pickRef("image", a.image, a.role.Image, func(s openstack.Server) string { return s.ImageID })
	if err != nil {
		return err
	}
	nw, err := pickRef("network", a.network, a.role.Network, func(s openstack.Server) string { return s.Network })
	if err != nil {
		return err
	}
	flavor, err := a.c.cloud.Flavor(ctx, fl)
	if err != nil {
		return err
	}
	image, err := a.c.cloud.Image(ctx, im)
	if err != nil {
		return err
	}
	network, err := a.c.cloud.Network(ctx, nw)
	if err != nil {
		return err
	}
	a.env.Log.Info("resolved", "flavor", flavor.Name, "image", image.Name, "network", network.Name)
	return errors.Join(keyFlavor.Set(v, flavor.ID), keyImage.Set(v, image.ID), keyNetwork.Set(v, network.ID))
}

func (a *adder) ensureGroup(ctx context.Context, v *pipeline.Values) error {
	if a.role.ServerGroup.Name == "" {
		return pipeline.Skip("role %s has no server group", a.roleName)
	}
	g, err := a.c.cloud.EnsureServerGroup(ctx, a.role.ServerGroup.Name, a.role.ServerGroup.Policy)
	if err != nil {
		return err
	}
	return keyServerGroup.Set(v, g.ID)
}

func (a *adder) createServer(ctx context.Context, v *pipeline.Values) error {
	name, err := keyHostname.Must(v)
	if err != nil {
		return err
	}
	opts := openstack.CreateOpts{Name: name, KeyName: a.role.KeyName,
		Metadata: map[string]string{"cookbook-cluster": a.cl.Name, "cookbook-role": a.roleName, "cookbook-run": v.RunID()}}
	var errs [4]error
	opts.FlavorID, _, errs[0] = keyFlavor.Lookup(v)
	opts.ImageID, _, errs[1] = keyImage.Lookup(v)
	opts.NetworkID, _, errs[2] = keyNetwork.Lookup(v)
	opts.ServerGroupID, _, errs[3] = keyServerGroup.Lookup(v)
	if err := errors.Join(errs[:]...); err != nil {
		return err
	}
	for _, sg := range a.role.SecurityGroups {
		opts.SecurityGroups = append(opts.SecurityGroups, sg)
	}
	srv, adopted, err := a.c.cloud.CreateServer(ctx, opts)
	if err != nil {
		return err
	}
	if adopted {
		a.env.Log.Info("adopted the existing server of that name", "server", name, "id", srv.ID)
	}
	return keyServerID.Set(v, srv.ID)
}

// dryNew reports whether the server exists only in this dry-run's imagination: its id is
// the placeholder the gate handed out for the create it skipped.
func dryNew(env *Env, v *pipeline.Values) bool {
	id, _ := keyServerID.Get(v)
	return env.DryRun && env.Gate.IsFake(id)
}

func (a *adder) waitActive(ctx context.Context, v *pipeline.Values) error {
	id, err := keyServerID.Must(v)
	if err != nil {
		return err
	}
	srv, err := a.c.cloud.WaitActive(ctx, id, a.timeout)
	if err != nil {
		return err
	}
	if dryNew(a.env, v) {
		return nil
	}
	return keyAddress.Set(v, srv.Address)
}

func (a *adder) pinHostKey(ctx context.Context, v *pipeline.Values) error {
	if dryNew(a.env, v) {
		a.env.Gate.Would(ctx, "pin the host key the new server prints on its console")
		return nil
	}
	id, err := keyServerID.Must(v)
	if err != nil {
		return err
	}
	keys, err := a.c.cloud.ConsoleHostKeys(ctx, id, a.timeout)
	if err != nil {
		return err
	}
	var fps []string
	for _, k := range keys {
		fps = append(fps, k.Fingerprint)
	}
	a.env.Log.Info("host key from the console", "fingerprints", strings.Join(fps, " "))
	return keyHostKeys.Set(v, fps)
}

// host returns the SSH target of the new node, pinned to its console host keys.
func (a *adder) host(ctx context.Context, v *pipeline.Values) (string, error) {
	name, err := keyHostname.Must(v)
	if err != nil {
		return "", err
	}
	return hostOf(ctx, a.c, v, name)
}

func (a *adder) waitSSH(ctx context.Context, v *pipeline.Values) error {
	if dryNew(a.env, v) {
		return pipeline.Skip("dry-run: the server does not exist")
	}
	host, err := a.host(ctx, v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	for {
		_, err := a.c.ssh.Run(ctx, host, ssh.Command{Argv: []string{"hostname"}, ReadOnly: true, Timeout: 30 * time.Second})
		if err == nil {
			return nil
		}
		var hk *ssh.HostKeyError
		if errors.As(err, &hk) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for ssh on %s: %w (last: %v)", host, ctx.Err(), err)
		case <-time.After(time.Second):
		}
	}
}

// runOn runs commands on the new node, skipping them in a dry-run of a new server.
func (a *adder) runOn(ctx context.Context, v *pipeline.Values, cmds ...ssh.Command) error {
	if dryNew(a.env, v) {
		for _, c := range cmds {
			a.env.Gate.Would(ctx, "run on the new node: "+ssh.Quote(c.Argv))
		}
		return nil
	}
	host, err := a.host(ctx, v)
	if err != nil {
		return err
	}
	for _, c := range cmds {
		if _, err := a.c.ssh.Run(ctx, host, c); err != nil {
			return err
		}
	}
	return nil
}

func (a *adder) prepareStorage(ctx context.Context, v *pipeline.Values) error {
	st := a.role.ExtraStorage
	if dryNew(a.env, v) {
		return a.runOn(ctx, v, ssh.Command{Argv: []string{"mkfs.ext4", "-L", "extra", st.Device}}, ssh.Command{Argv: []string{"mount", st.Device, st.MountPoint}})
	}
	host, err := a.host(ctx, v)
	if err != nil {
		return err
	}
	// A device that has a filesystem already (an interrupted run) is not formatted again.
	_, err = a.c.ssh.Run(ctx, host, ssh.Command{Argv: []string{"blkid", st.Device}, ReadOnly: true})
	var exit *ssh.ExitError
	switch {
	case err == nil:
		a.env.Log.Info("the device has a filesystem already; not formatting it", "device", st.Device)
	case errors.As(err, &exit) && exit.Status == 2:
		if _, err := a.c.ssh.Run(ctx, host, ssh.Command{Argv: []string{"mkfs.ext4", "-L", "extra", st.Device}}); err != nil {
			return err
		}
	default:
		return err
	}
	return a.runOn(ctx, v,
		ssh.Command{Argv: []string{"mkdir", "-p", st.MountPoint}},
		ssh.Command{Argv: []string{"mount", st.Device, st.MountPoint}})
}

func (a *adder) provision(ctx context.Context, v *pipeline.Values) error {
	done, _, err := keyProvisioned.Lookup(v)
	if err != nil {
		return err
	}
	for i := done; i < len(a.role.Provision); i++ {
		if err := a.runOn(ctx, v, ssh.Command{Argv: a.role.Provision[i], Timeout: 30 * time.Minute}); err != nil {
			return fmt.Errorf("provisioning command %d of %d: %w", i+1, len(a.role.Provision), err)
		}
		if !a.env.DryRun {
			if err := keyProvisioned.Set(v, i+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// join gets a join command from a control-plane node and runs it on the new node. The
// token is a secret: it is neither logged nor recorded, so the step asks for a new one
// when it runs again.
func (a *adder) join(ctx context.Context, v *pipeline.Values) error {
	name, err := keyHostname.Must(v)
	if err != nil {
		return err
	}
	if n, err := a.c.kube.Node(ctx, name); err == nil && n != nil {
		return pipeline.Skip("node %s is registered already", name)
	}
	if a.env.DryRun {
		// Asking a control node for a join command creates a token: a write.
		a.env.Gate.Would(ctx, "get a join command from a control node and run kubeadm join on "+name)
		return nil
	}
	if len(a.cl.ControlNodes) == 0 {
		return BadInputf("clusters.%s.controlNodes is empty: no node to get a join command from", a.cl.Name)
	}
	var join []string
	var lastErr error
	for _, cn := range a.cl.ControlNodes {
		target, err := a.c.target(ctx, cn)
		if err != nil {
			lastErr = err
			continue
		}
		res, err := a.c.ssh.Run(ctx, target, ssh.Command{Argv: []string{"kubeadm", "token", "create", "--print-join-command"}, Secret: true,
			LogAs: "kubeadm token create --print-join-command"})
		if err != nil {
			lastErr = err
			a.env.Log.Warn("cannot get a join command from this control node; trying the next", "node", cn, "err", err)
			continue
		}
		join = strings.Fields(res.Stdout)
		break
	}
	if len(join) < 3 || join[0] != "kubeadm" || join[1] != "join" {
		return fmt.Errorf("no join command from the control nodes %s: %v", strings.Join(a.cl.ControlNodes, ", "), lastErr)
	}
	if a.role.ControlPlane {
		join = append(join, "--control-plane")
	}
	return a.runOn(ctx, v, ssh.Command{Argv: join, Secret: true, LogAs: fmt.Sprintf("kubeadm join %s --token [hidden] ...", join[2]), Timeout: 10 * time.Minute})
}

func (a *adder) waitReady(ctx context.Context, v *pipeline.Values) error {
	if dryNew(a.env, v) {
		return pipeline.Skip("dry-run: the node does not exist")
	}
	name, err := keyHostname.Must(v)
	if err != nil {
		return err
	}
	if a.env.DryRun {
		// A rehearsal does not wait for what a skipped write (the join) would have done.
		n, err := a.c.kube.Node(ctx, name)
		if err != nil || n == nil {
			return pipeline.Skip("dry-run: node %s has not joined the cluster", name)
		}
	}
	return a.c.kube.WaitReady(ctx, name, a.timeout)
}

func (a *adder) labelsTaints(ctx context.Context, v *pipeline.Values) error {
	name, err := keyHostname.Must(v)
	if err != nil {
		return err
	}
	if dryNew(a.env, v) {
		a.env.Gate.Would(ctx, "label and taint node "+name, "labels", kvString(a.role.Labels), "taints", len(a.role.Taints))
		return nil
	}
	if a.env.DryRun {
		if n, err := a.c.kube.Node(ctx, name); err != nil || n == nil {
			a.env.Gate.Would(ctx, "label and taint node "+name+" once it has joined", "labels", kvString(a.role.Labels), "taints", len(a.role.Taints))
			return nil
		}
	}
	if err := a.c.kube.ApplyLabels(ctx, name, a.role.Labels); err != nil {
		return err
	}
	return a.c.kube.ApplyTaints(ctx, name, kubeTaints(a.role.Taints))
}

func kvString(m map[string]string) string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	return strings.Join(out, ",")
}
