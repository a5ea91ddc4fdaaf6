package cookbooks

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/hooks"
	"example.com/cookbook/openstack"
	"example.com/cookbook/ssh"
)

// addSpec is what a new node is to be: the role's configuration with the operator's
// overrides applied. add-k8s-node records it when the run is planned (key "node-spec"),
// so that editing the configuration before a resume cannot change what the run does.
type addSpec struct {
	Role   string `json:"role"`
	Prefix string `json:"prefix"`
	// Flavor, Image and Network are the flag, else the configuration's, else "" (copy
	// the newest node of the role).
	Flavor         string   `json:"flavor,omitempty"`
	Image          string   `json:"image,omitempty"`
	Network        string   `json:"network,omitempty"`
	SecurityGroups []string `json:"securityGroups,omitempty"`
	// DefaultSecurityGroup puts the server in the project's "default" security group
	// besides SecurityGroups.
	DefaultSecurityGroup bool                 `json:"defaultSecurityGroup,omitempty"`
	ServerGroup          config.ServerGroup   `json:"serverGroup,omitempty"`
	KeyName              string               `json:"keyName,omitempty"`
	Labels               map[string]string    `json:"labels,omitempty"`
	Taints               []config.Taint       `json:"taints,omitempty"`
	ControlPlane         bool                 `json:"controlPlane,omitempty"`
	ExtraStorage         *config.ExtraStorage `json:"extraStorage,omitempty"`
	Provision            [][]string           `json:"provision,omitempty"`
	RebootAfterProvision bool                 `json:"rebootAfterProvision,omitempty"`
}

// addOverrides are the operator's choices that take the place of the role's.
type addOverrides struct{ Flavor, Image, Network string }

// newAddSpec applies the overrides to the role's configuration.
func newAddSpec(roleName string, role *config.Role, o addOverrides) addSpec {
	first := func(a, b string) string {
		if a != "" {
			return a
		}
		return b
	}
	return addSpec{
		Role: roleName, Prefix: role.Prefix,
		Flavor: first(o.Flavor, role.Flavor), Image: first(o.Image, role.Image), Network: first(o.Network, role.Network),
		SecurityGroups: role.SecurityGroups, DefaultSecurityGroup: role.InDefaultSecurityGroup(), ServerGroup: role.ServerGroup, KeyName: role.KeyName,
		Labels: role.Labels, Taints: role.Taints, ControlPlane: role.ControlPlane,
		ExtraStorage: role.ExtraStorage, Provision: role.Provision, RebootAfterProvision: role.RebootAfterProvision,
	}
}

// addKeys are the values the add step set records, in its scope.
type addKeys struct {
	hostname    pipeline.Key[string]   // the new node's name
	flavor      pipeline.Key[string]   // resolved flavor id
	image       pipeline.Key[string]   // resolved image id
	network     pipeline.Key[string]   // resolved network id
	serverGroup pipeline.Key[string]   // server group id ("" for none)
	serverID    pipeline.Key[string]   // recorded before any wait
	address     pipeline.Key[string]   // the server's address
	hostKeys    pipeline.Key[[]string] // fingerprints from the console
	provisioned pipeline.Key[int]      // provisioning commands done
}

func addKeysIn(s pipeline.Scope) addKeys {
	return addKeys{
		hostname:    pipeline.In(s, pipeline.Key[string]("hostname")),
		flavor:      pipeline.In(s, pipeline.Key[string]("flavor-id")),
		image:       pipeline.In(s, pipeline.Key[string]("image-id")),
		network:     pipeline.In(s, pipeline.Key[string]("network-id")),
		serverGroup: pipeline.In(s, pipeline.Key[string]("server-group")),
		serverID:    pipeline.In(s, pipeline.Key[string]("server-id")),
		address:     pipeline.In(s, pipeline.Key[string]("address")),
		hostKeys:    pipeline.In(s, pipeline.Key[[]string]("host-keys")),
		provisioned: pipeline.In(s, pipeline.Key[int]("provisioned")),
	}
}

// nodeAdder is the add step set of one new node.
type nodeAdder struct {
	env     *Env
	c       *clients
	spec    addSpec
	k       addKeys
	timeout time.Duration // each wait's
}

// addNode is the step set that creates a server as spec says and joins it to the cluster,
// its values in scope s: pick-name, resolve-flavor-image-network, ensure-server-group,
// create-server (an existing server of the name is adopted; its id is recorded before any
// wait), wait-active, pin-host-key, wait-ssh, wait-cloud-init, prepare-storage (with extra storage),
// provision (with provisioning commands), reboot (if the role asks), join,
// wait-node-ready, apply-labels-taints. name returns the node's name once pick-name ran.
func addNode(c *clients, s pipeline.Scope, spec addSpec, timeout time.Duration) (steps []pipeline.Step, name func(*pipeline.Values) string) {
	a := &nodeAdder{env: c.env, c: c, spec: spec, k: addKeysIn(s), timeout: timeout}
	name = func(v *pipeline.Values) string {
		n, _ := a.k.hostname.Get(v)
		return n
	}
	desc := func(f string) func(*pipeline.Values) string {
		return func(v *pipeline.Values) string { return fmt.Sprintf(f, name(v)) }
	}
	steps = []pipeline.Step{}
	if spec.ControlPlane {
		// A control node joins etcd: the cluster must be healthy before, and with it after.
		steps = append(steps, checkEtcd(c, "check-etcd", etcdCheck{}))
	}
	steps = append(steps, []pipeline.Step{
		{Name: "pick-name", Desc: pipeline.Textf("pick the next name of role %s (%s-N)", spec.Role, spec.Prefix), Do: a.pickName},
		{Name: "resolve-flavor-image-network", Desc: pipeline.Text("resolve flavor, image and network (flags, else config, else the newest node of the role)"), Do: a.resolve},
		{Name: "ensure-server-group", Desc: pipeline.Textf("ensure server group %s (policy %s)", spec.ServerGroup.Name, spec.ServerGroup.Policy), Do: a.ensureGroup},
		{Name: "create-server", Desc: desc("create server %s (or adopt it if it exists)"), Do: a.createServer, Undo: a.leaveServer},
		{Name: "wait-active", Desc: desc("wait for server %s to be ACTIVE"), Do: a.waitActive},
		{Name: "pin-host-key", Desc: desc("pin the SSH host key %s printed on its console"), Do: a.pinHostKey},
		{Name: "wait-ssh", Desc: desc("wait until %s answers SSH"), Do: a.waitSSH},
		{Name: "wait-cloud-init", Desc: desc("wait for cloud-init to finish on %s"), Do: a.waitCloudInit},
	}...)
	// The afterCreate hooks: the server is up and answers SSH.
	steps = append(steps, hookSteps(c, spec.Role, hooks.AfterCreate, a.hookNode)...)
	if spec.ExtraStorage != nil {
		steps = append(steps, pipeline.Step{Name: "prepare-storage", Desc: desc("prepare the extra storage of %s"), Do: a.prepareStorage})
	}
	if len(spec.Provision) > 0 {
		steps = append(steps, pipeline.Step{Name: "provision", Desc: pipeline.Textf("run the %d provisioning command(s) of role %s", len(spec.Provision), spec.Role), Do: a.provision})
	}
	if spec.RebootAfterProvision {
		self := nodeRef{Name: a.k.hostname.Must, Host: a.host, Imaginary: a.imaginary}
		steps = append(steps, reboot(c, s, self, rebootOpts{Timeout: timeout, HardFallback: true})...)
	}
	steps = append(steps,
		pipeline.Step{Name: "join", Desc: desc("join %s to the cluster with kubeadm"), Do: a.join},
		pipeline.Step{Name: "wait-node-ready", Desc: desc("wait for node %s to be Ready"), Do: a.waitReady},
		pipeline.Step{Name: "apply-labels-taints", Desc: desc("apply the role's labels and taints to %s"), Do: a.labelsTaints},
	)
	if spec.ControlPlane {
		steps = append(steps, checkEtcd(c, "check-etcd-after", etcdCheck{Node: a.k.hostname.Must, Member: true, Wait: timeout}))
	}
	// The afterJoin hooks: the node is Ready with its labels and taints.
	steps = append(steps, hookSteps(c, spec.Role, hooks.AfterJoin, a.hookNode)...)
	return steps, name
}

// hookNode is the new node's values for its hooks, from what the steps recorded.
func (a *nodeAdder) hookNode(v *pipeline.Values) (hooks.Node, error) {
	name, err := a.k.hostname.Must(v)
	if err != nil {
		return hooks.Node{}, err
	}
	id, _ := a.k.serverID.Get(v)
	addr, _ := a.k.address.Get(v)
	return a.c.hookNode(name, a.spec.Role, id, addr), nil
}

func (a *nodeAdder) pickName(ctx context.Context, v *pipeline.Values) error {
	_, ok, err := a.k.hostname.Lookup(v)
	if err != nil {
		return err
	}
	if ok {
		return nil
	}
	list, err := a.c.cloud.RoleServers(ctx, a.spec.Prefix)
	if err != nil {
		return err
	}
	name := openstack.NextName(a.spec.Prefix, list)
	a.env.Log.Info("new node name", "name", name, "existing", len(list))
	return a.k.hostname.Set(v, name)
}

func (a *nodeAdder) resolve(ctx context.Context, v *pipeline.Values) error {
	var newest *openstack.Server
	list, err := a.c.cloud.RoleServers(ctx, a.spec.Prefix)
	if err != nil {
		return err
	}
	for i := range list {
		if newest == nil || list[i].Created.After(newest.Created) {
			newest = &list[i]
		}
	}
	pickRef := func(what, ref string, fromNewest func(openstack.Server) string) (string, error) {
		switch {
		case ref != "":
			return ref, nil
		case newest != nil && fromNewest(*newest) != "":
			return fromNewest(*newest), nil
		}
		return "", BadInputf("no %s for role %s: give --%s, set roles.%s.%s in the configuration, or have a node of the role to copy", what, a.spec.Role, what, a.spec.Role, what)
	}
	fl, err := pickRef("flavor", a.spec.Flavor, func(s openstack.Server) string { return s.FlavorID })
	if err != nil {
		return err
	}
	im, err := pickRef("image", a.spec.Image, func(s openstack.Server) string { return s.ImageID })
	if err != nil {
		return err
	}
	nw, err := pickRef("network", a.spec.Network, func(s openstack.Server) string { return s.Network })
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
	return errors.Join(a.k.flavor.Set(v, flavor.ID), a.k.image.Set(v, image.ID), a.k.network.Set(v, network.ID))
}

func (a *nodeAdder) ensureGroup(ctx context.Context, v *pipeline.Values) error {
	if a.spec.ServerGroup.Name == "" {
		return pipeline.Skip("role %s has no server group", a.spec.Role)
	}
	g, err := a.c.cloud.EnsureServerGroup(ctx, a.spec.ServerGroup.Name, a.spec.ServerGroup.Policy)
	if err != nil {
		return err
	}
	if want := a.spec.ServerGroup.Policy; want != "" && g.Policy != want {
		// Nova cannot change a group's policy, and the servers in it were placed by its
		// own: placing the new one by another would not give what the configuration asks.
		a.env.Log.Warn("the server group has another policy than the configuration's; using it as it is",
			"server_group", g.Name, "policy", g.Policy, "configured", want)
	}
	return a.k.serverGroup.Set(v, g.ID)
}

func (a *nodeAdder) createServer(ctx context.Context, v *pipeline.Values) error {
	name, err := a.k.hostname.Must(v)
	if err != nil {
		return err
	}
	opts := openstack.CreateOpts{Name: name, KeyName: a.spec.KeyName,
		Metadata: map[string]string{"cookbook-cluster": a.c.cl.Name, "cookbook-role": a.spec.Role, "cookbook-run": v.RunID()}}
	var errs [4]error
	opts.FlavorID, _, errs[0] = a.k.flavor.Lookup(v)
	opts.ImageID, _, errs[1] = a.k.image.Lookup(v)
	opts.NetworkID, _, errs[2] = a.k.network.Lookup(v)
	opts.ServerGroupID, _, errs[3] = a.k.serverGroup.Lookup(v)
	if err := errors.Join(errs[:]...); err != nil {
		return err
	}
	// OpenStack puts a server in "default" only when it is given no group at all.
	if a.spec.DefaultSecurityGroup && !slices.Contains(a.spec.SecurityGroups, "default") {
		opts.SecurityGroups = append(opts.SecurityGroups, "default")
	}
	opts.SecurityGroups = append(opts.SecurityGroups, a.spec.SecurityGroups...)
	srv, adopted, err := a.c.cloud.CreateServer(ctx, opts)
	if err != nil {
		return err
	}
	if adopted {
		a.env.Log.Info("adopted the existing server of that name", "server", name, "id", srv.ID)
	}
	return a.k.serverID.Set(v, srv.ID)
}

// leaveServer is create-server's undo. An abandon does not delete the server the run
// created (it may have joined the cluster and run pods): it names the server it leaves
// and the command that removes it, node and all. It reads only: a server no longer there,
// or one this run did not create and never recorded, is not named.
func (a *nodeAdder) leaveServer(ctx context.Context, v *pipeline.Values) error {
	name, ok, err := a.k.hostname.Lookup(v)
	if err != nil || !ok {
		return err
	}
	id, recorded, err := a.k.serverID.Lookup(v)
	if err != nil {
		return err
	}
	list, err := a.c.cloud.ServersNamed(ctx, "^"+regexp.QuoteMeta(name)+"$")
	if err != nil {
		return fmt.Errorf("look for server %s: %w", name, err)
	}
	for _, srv := range list {
		// Unrecorded: the run was stopped between the create and recording its id.
		if (recorded && srv.ID == id) || (!recorded && srv.Metadata["cookbook-run"] == v.RunID()) {
			a.env.Log.Warn("abandon leaves the server this run created, and its node if it joined", "server", name, "id", srv.ID,
				"remove_with", fmt.Sprintf("cookbook remove-k8s-node --cluster-name %s --role %s --hostname-to-remove %s", a.c.cl.Name, a.spec.Role, name))
			return nil
		}
	}
	return nil
}

// imaginary reports whether the server exists only in this dry-run's imagination: its id
// is the placeholder the gate handed out for the create it skipped.
func (a *nodeAdder) imaginary(v *pipeline.Values) bool {
	id, _ := a.k.serverID.Get(v)
	return a.env.DryRun && a.env.Gate.IsFake(id)
}

func (a *nodeAdder) waitActive(ctx context.Context, v *pipeline.Values) error {
	id, err := a.k.serverID.Must(v)
	if err != nil {
		return err
	}
	srv, err := a.c.cloud.WaitActive(ctx, id, a.timeout)
	if err != nil {
		return err
	}
	if a.imaginary(v) {
		return nil
	}
	return a.k.address.Set(v, srv.Address)
}

func (a *nodeAdder) pinHostKey(ctx context.Context, v *pipeline.Values) error {
	if a.imaginary(v) {
		a.env.Gate.Would(ctx, "pin the host key the new server prints on its console")
		return nil
	}
	id, err := a.k.serverID.Must(v)
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
	return a.k.hostKeys.Set(v, fps)
}

// host returns the SSH target of the new node, pinned to the host keys its console
// printed (pinned again after a restart).
func (a *nodeAdder) host(ctx context.Context, v *pipeline.Values) (string, error) {
	name, err := a.k.hostname.Must(v)
	if err != nil {
		return "", err
	}
	target := a.c.cl.FQDN(name)
	if a.c.cl.SSH.ConnectTo == "address" {
		if target, err = a.k.address.Must(v); err != nil {
			return "", err
		}
	}
	fps, ok, err := a.k.hostKeys.Lookup(v)
	if err != nil {
		return "", err
	}
	if ok {
		a.c.ssh.Pin(target, fps)
	}
	return target, nil
}

func (a *nodeAdder) waitSSH(ctx context.Context, v *pipeline.Values) error {
	if a.imaginary(v) {
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

// bootFinished is the file cloud-init writes when it has finished, on every boot.
const bootFinished = "/var/lib/cloud/instance/boot-finished"

// cloudInitProgress is how often the wait for cloud-init says it is still waiting.
const cloudInitProgress = 30 * time.Second

// waitCloudInit waits until cloud-init has finished on the new node: what it does (package
// installs holding the dpkg lock, users, mounts) would race with provisioning.
func (a *nodeAdder) waitCloudInit(ctx context.Context, v *pipeline.Values) error {
	if a.imaginary(v) {
		return pipeline.Skip("dry-run: the server does not exist")
	}
	host, err := a.host(ctx, v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	start := time.Now()
	var last time.Time // of the last progress line
	for {
		_, err := a.c.ssh.Run(ctx, host, ssh.Command{Argv: []string{"test", "-e", bootFinished}, ReadOnly: true, Timeout: 30 * time.Second})
		if err == nil {
			if waited := time.Since(start); waited > time.Second {
				a.env.Log.Info("cloud-init has finished", "host", host, "waited", waited.Round(time.Second))
			}
			return nil
		}
		var exit *ssh.ExitError
		var hk *ssh.HostKeyError
		switch {
		case errors.As(err, &exit) && exit.Status == 1: // not yet
		case errors.As(err, &exit), errors.As(err, &hk):
			return fmt.Errorf("wait for cloud-init on %s: %w", host, err)
		default: // the connection failed: try again
		}
		if time.Since(last) >= cloudInitProgress {
			last = time.Now()
			a.env.Log.Info("waiting for cloud-init to finish", "host", host, "file", bootFinished,
				"waited", time.Since(start).Round(time.Second), "timeout", a.timeout, "last", errString(err))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for cloud-init on %s (%s): %w", host, bootFinished, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// errString is what a progress line says of the last attempt.
func errString(err error) string {
	var exit *ssh.ExitError
	if errors.As(err, &exit) {
		return "not yet"
	}
	return err.Error()
}

// runOn runs commands on the new node, skipping them in a dry-run of a new server.
func (a *nodeAdder) runOn(ctx context.Context, v *pipeline.Values, cmds ...ssh.Command) error {
	if a.imaginary(v) {
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

func (a *nodeAdder) prepareStorage(ctx context.Context, v *pipeline.Values) error {
	st := a.spec.ExtraStorage
	typ := st.Type()
	mkfs := ssh.Command{Argv: []string{"mkfs." + typ, "-L", "extra", st.Device}}
	if a.imaginary(v) {
		return a.runOn(ctx, v, mkfs, ssh.Command{Argv: []string{"mkdir", "-p", st.MountPoint}},
			ssh.Command{Argv: []string{"sed", "-i", fmt.Sprintf("$a UUID=<new> %s %s defaults,nofail 0 2", st.MountPoint, typ), "/etc/fstab"}},
			ssh.Command{Argv: []string{"mount", "-a"}})
	}
	host, err := a.host(ctx, v)
	if err != nil {
		return err
	}
	blkid := func(tag string) (string, bool, error) {
		res, err := a.c.ssh.Run(ctx, host, ssh.Command{Argv: []string{"blkid", "-s", tag, "-o", "value", st.Device}, ReadOnly: true})
		var exit *ssh.ExitError
		switch {
		case err == nil:
			return strings.TrimSpace(res.Stdout), true, nil
		case errors.As(err, &exit) && exit.Status == 2:
			return "", false, nil
		}
		return "", false, err
	}
	// A device that has a filesystem of the type already (an interrupted run) is not
	// formatted again; one of another type is formatted only if the role says so.
	have, ok, err := blkid("TYPE")
	switch {
	case err != nil:
		return err
	case !ok:
		if _, err := a.c.ssh.Run(ctx, host, mkfs); err != nil {
			return err
		}
	case have == typ:
		a.env.Log.Info("the device has a filesystem of the type already; not formatting it", "device", st.Device, "type", typ)
	case !st.Reformat:
		return fmt.Errorf("extra storage %s on %s has a %s filesystem, not %s: set roles.%s.extraStorage.reformat: true to format it (losing what is on it)",
			st.Device, host, have, typ, a.spec.Role)
	default:
		a.env.Log.Warn("formatting the device, which has a filesystem of another type (extraStorage.reformat)", "device", st.Device, "had", have, "type", typ)
		force := map[string]string{"ext4": "-F", "xfs": "-f"}[typ]
		if _, err := a.c.ssh.Run(ctx, host, ssh.Command{Argv: []string{"mkfs." + typ, force, "-L", "extra", st.Device}}); err != nil {
			return err
		}
	}
	uuid, ok, err := blkid("UUID")
	switch {
	case err != nil:
		return err
	case (!ok || uuid == "") && a.env.DryRun:
		uuid = "<new>" // of the filesystem the rehearsal did not make
	case !ok || uuid == "":
		return fmt.Errorf("no UUID for %s on %s after formatting", st.Device, host)
	}
	if err := a.runOn(ctx, v, ssh.Command{Argv: []string{"mkdir", "-p", st.MountPoint}}); err != nil {
		return err
	}
	// The filesystem is in /etc/fstab by UUID (device names can change between boots),
	// once; another entry for the mount point is an error.
	res, err := a.c.ssh.Run(ctx, host, ssh.Command{Argv: []string{"cat", "/etc/fstab"}, ReadOnly: true})
	if err != nil {
		return err
	}
	listed := false
	for _, l := range strings.Split(res.Stdout, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") || f[1] != st.MountPoint {
			continue
		}
		if f[0] != "UUID="+uuid {
			return fmt.Errorf("/etc/fstab on %s has another entry for %s: %q", host, st.MountPoint, l)
		}
		listed = true
	}
	if !listed {
		line := fmt.Sprintf("UUID=%s %s %s defaults,nofail 0 2", uuid, st.MountPoint, typ)
		if err := a.runOn(ctx, v, ssh.Command{Argv: []string{"sed", "-i", "$a " + line, "/etc/fstab"}}); err != nil {
			return err
		}
	}
	return a.runOn(ctx, v, ssh.Command{Argv: []string{"mount", "-a"}})
}

func (a *nodeAdder) provision(ctx context.Context, v *pipeline.Values) error {
	done, _, err := a.k.provisioned.Lookup(v)
	if err != nil {
		return err
	}
	for i := done; i < len(a.spec.Provision); i++ {
		if err := a.runOn(ctx, v, ssh.Command{Argv: a.spec.Provision[i], Timeout: 30 * time.Minute}); err != nil {
			return fmt.Errorf("provisioning command %d of %d: %w", i+1, len(a.spec.Provision), err)
		}
		if !a.env.DryRun {
			if err := a.k.provisioned.Set(v, i+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// join gets a join command from a control-plane node and runs it on the new node, then
// deletes the bootstrap token on that control node, whether the join worked or not. The
// token is a secret: it is neither logged nor recorded (its id, before the dot, is
// logged), so the step asks for a new one when it runs again.
func (a *nodeAdder) join(ctx context.Context, v *pipeline.Values) (errp error) {
	name, err := a.k.hostname.Must(v)
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
	controls, err := a.c.controlNodes(ctx)
	if err != nil {
		return err
	}
	var join []string
	var lastErr error
	var from string // the control node's SSH target the token came from
	for _, cn := range controls {
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
		join, from = strings.Fields(res.Stdout), target
		break
	}
	tokenID := joinTokenID(join)
	if tokenID != "" {
		// The token is deleted whatever the join did, as the Toolforge cookbook does in a
		// finally: a bootstrap token left behind lets anyone who has it join a node.
		defer func() {
			err := a.deleteToken(ctx, from, tokenID)
			if err != nil {
				err = fmt.Errorf("delete bootstrap token %s on %s: %w", tokenID, from, err)
			}
			errp = errors.Join(errp, err)
		}()
	}
	if len(join) < 3 || join[0] != "kubeadm" || join[1] != "join" || tokenID == "" {
		return fmt.Errorf("no join command from the control nodes %s: %v", strings.Join(controls, ", "), lastErr)
	}
	logAs := fmt.Sprintf("kubeadm join %s --token %s.[hidden] ...", join[2], tokenID)
	if a.spec.ControlPlane {
		key, err := a.certificateKey(ctx, from)
		if err != nil {
			return err
		}
		join = append(join, "--control-plane", "--certificate-key", key)
		logAs += " --control-plane --certificate-key [hidden]"
	}
	a.env.Log.Info("joining with a new bootstrap token", "token_id", tokenID, "control_node", from, "control_plane", a.spec.ControlPlane)
	return a.runOn(ctx, v, ssh.Command{Argv: join, Secret: true, LogAs: logAs, Timeout: 10 * time.Minute})
}

// certificateKeyRE is the certificate key kubeadm prints: 32 bytes in hex.
var certificateKeyRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// certificateKey uploads the cluster's certificates on a control node (kubeadm init phase
// upload-certs --upload-certs, kubeadm's way of handing them to a joining control node,
// valid two hours) and returns the key that decrypts them. The key is a secret: neither
// the command's output nor the key is logged, recorded or put in an error.
func (a *nodeAdder) certificateKey(ctx context.Context, target string) (string, error) {
	const cmd = "kubeadm init phase upload-certs --upload-certs"
	res, err := a.c.ssh.Run(ctx, target, ssh.Command{Argv: strings.Fields(cmd), Secret: true, LogAs: cmd, Timeout: 2 * time.Minute})
	if err != nil {
		return "", fmt.Errorf("upload the certificates for a control-plane join: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
	if key := strings.TrimSpace(lines[len(lines)-1]); certificateKeyRE.MatchString(key) {
		return key, nil
	}
	return "", fmt.Errorf("%s on %s printed no certificate key (64 hex digits) on its last line", cmd, target)
}

// joinTokenID returns the id of the bootstrap token of a kubeadm join command line (the
// part of the token before the dot, which is not secret), or "".
func joinTokenID(join []string) string {
	for i, w := range join {
		tok := ""
		switch {
		case w == "--token" && i+1 < len(join):
			tok = join[i+1]
		case strings.HasPrefix(w, "--token="):
			tok = strings.TrimPrefix(w, "--token=")
		default:
			continue
		}
		if id, _, ok := strings.Cut(tok, "."); ok && id != "" {
			return id
		}
	}
	return ""
}

// deleteToken deletes a bootstrap token on the control node it came from, also when the
// step's context is done (an interrupted join), within a minute.
func (a *nodeAdder) deleteToken(ctx context.Context, target, id string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if _, err := a.c.ssh.Run(ctx, target, ssh.Command{Argv: []string{"kubeadm", "token", "delete", id}, Timeout: 30 * time.Second}); err != nil {
		return err
	}
	a.env.Log.Info("deleted the bootstrap token", "token_id", id, "control_node", target)
	return nil
}

func (a *nodeAdder) waitReady(ctx context.Context, v *pipeline.Values) error {
	if a.imaginary(v) {
		return pipeline.Skip("dry-run: the node does not exist")
	}
	name, err := a.k.hostname.Must(v)
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

func (a *nodeAdder) labelsTaints(ctx context.Context, v *pipeline.Values) error {
	name, err := a.k.hostname.Must(v)
	if err != nil {
		return err
	}
	if a.imaginary(v) {
		a.env.Gate.Would(ctx, "label and taint node "+name, "labels", kvString(a.spec.Labels), "taints", len(a.spec.Taints))
		return nil
	}
	if a.env.DryRun {
		if n, err := a.c.kube.Node(ctx, name); err != nil || n == nil {
			a.env.Gate.Would(ctx, "label and taint node "+name+" once it has joined", "labels", kvString(a.spec.Labels), "taints", len(a.spec.Taints))
			return nil
		}
	}
	if err := a.c.kube.ApplyLabels(ctx, name, a.spec.Labels); err != nil {
		return err
	}
	return a.c.kube.ApplyTaints(ctx, name, kubeTaints(a.spec.Taints))
}

func kvString(m map[string]string) string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	return strings.Join(out, ",")
}
