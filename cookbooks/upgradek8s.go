package cookbooks

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	corev1 "k8s.io/api/core/v1"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/k8sops"
	"example.com/cookbook/ssh"
)

// keyPkgVersion is the Debian package version of the target Kubernetes version on a node
// ("1.37.3-1.1"), found with apt-cache madison, in the node's scope.
const keyPkgVersion = pipeline.Key[string]("pkg-version")

// kubePkgs are the packages a Kubernetes upgrade installs and holds.
var kubePkgs = []string{"kubeadm", "kubelet", "kubectl"}

// controlRefused is why control nodes are not upgraded yet.
const controlRefused = "control nodes are not upgraded by this cookbook yet: the first needs kubeadm upgrade apply and every one the etcd checks of issue 14"

// UpgradeNode upgrades the Kubernetes packages of one worker.
func UpgradeNode() Cookbook {
	return Cookbook{
		Name:    "upgrade-k8s-node",
		Usage:   "upgrade a worker's kubeadm, kubelet and kubectl: cordon, drain, install, kubeadm upgrade node, restart kubelet, wait for the new version, uncordon",
		Example: "cookbook upgrade-k8s-node --cluster-name toolsbeta --hostname toolsbeta-test-k8s-worker-3 --dst-version 1.37.3",
		Flags: append([]cli.Flag{
			clusterFlag(),
			&cli.StringFlag{Name: "hostname", Usage: "the node to upgrade"},
			&cli.StringFlag{Name: "dst-version", Usage: "the Kubernetes version to upgrade to (X.Y.Z)"},
			&cli.StringFlag{Name: "src-version", Usage: "the version the node must be at (default: whatever older version it reports)"},
		}, upgradeFlags()...),
		Prepare: prepareUpgradeNode,
	}
}

// UpgradeCluster upgrades the Kubernetes packages of a cluster's workers in batches.
func UpgradeCluster() Cookbook {
	return Cookbook{
		Name:    "upgrade-k8s-cluster",
		Usage:   "upgrade the workers' kubeadm, kubelet and kubectl in batches of --max-unavailable, with health gates",
		Example: "cookbook upgrade-k8s-cluster --cluster-name toolsbeta --dst-version 1.37.3 --max-unavailable 2",
		Flags: append([]cli.Flag{
			clusterFlag(),
			&cli.StringFlag{Name: "dst-version", Usage: "the Kubernetes version to upgrade to (X.Y.Z)"},
			&cli.StringFlag{Name: "role", Usage: "only the nodes of this (worker) role; default every worker role"},
			&cli.IntFlag{Name: "max-unavailable", Value: 1, Usage: "nodes taken down at once (counting nodes an administrator cordoned)"},
			&cli.DurationFlag{Name: "settle", Value: 0, Usage: "pause after each batch's health gate"},
		}, upgradeFlags()...),
		Prepare: prepareUpgradeCluster,
	}
}

func upgradeFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.DurationFlag{Name: "timeout", Value: 10 * time.Minute, Usage: "how long a node may take to report the new version and be Ready"},
		&cli.BoolFlag{Name: "force-uncordon", Usage: "also uncordon nodes an administrator had cordoned before the run"},
		&cli.BoolFlag{Name: "silence-cluster", Usage: "silence the alerts of the whole cluster for the run (one silence, alertmanager.clusterDuration, 3h by default), expired at its end"},
	}, drainFlags()...)
}

// version is a Kubernetes version X.Y.Z.
type version [3]int

func (v version) String() string { return fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2]) }

func (v version) less(w version) bool {
	for i := range v {
		if v[i] != w[i] {
			return v[i] < w[i]
		}
	}
	return false
}

// parseVersion reads "X.Y.Z" or "vX.Y.Z".
func parseVersion(s string) (version, error) {
	var v version
	parts := strings.Split(strings.TrimPrefix(s, "v"), ".")
	if len(parts) != 3 {
		return v, fmt.Errorf("%q is not a version X.Y.Z", s)
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return v, fmt.Errorf("%q is not a version X.Y.Z", s)
		}
		v[i] = n
	}
	return v, nil
}

func versionFlag(c *cli.Context, name string) (version, error) {
	if c.String(name) == "" {
		return version{}, BadInputf("--%s is required", name)
	}
	v, err := parseVersion(c.String(name))
	if err != nil {
		return v, BadInputf("--%s: %w", name, err)
	}
	return v, nil
}

// upgrader is an upgrade job on the rolling skeleton.
type upgrader struct {
	env     *Env
	cl      *config.Cluster
	job     string
	dst     version
	src     *version
	max     int
	settle  time.Duration
	timeout time.Duration
	force   bool
	drain   k8sops.DrainOptions
	// silence is --silence-cluster.
	silence bool

	selectNodes func(names []string) ([]string, error)
}

func newUpgrader(c *cli.Context, env *Env, job string) (*upgrader, error) {
	cl, err := env.Cluster(c.String("cluster-name"))
	if err != nil {
		return nil, err
	}
	u := &upgrader{env: env, cl: cl, job: job, max: 1, force: c.Bool("force-uncordon")}
	if u.dst, err = versionFlag(c, "dst-version"); err != nil {
		return nil, err
	}
	if u.drain, err = drainOptions(c); err != nil {
		return nil, err
	}
	if u.timeout, err = positiveDuration(c, "timeout", 10*time.Minute); err != nil {
		return nil, err
	}
	if u.silence = c.Bool("silence-cluster"); u.silence && cl.Alertmanager == nil {
		return nil, BadInputf("--silence-cluster: cluster %s has no alertmanager in the configuration (expected alertmanager: {url: ...})", cl.Name)
	}
	return u, nil
}

func prepareUpgradeNode(c *cli.Context, env *Env) (*Job, error) {
	u, err := newUpgrader(c, env, "upgrade-k8s-node")
	if err != nil {
		return nil, err
	}
	host, err := hostnameFlag(c, "hostname")
	if err != nil {
		return nil, err
	}
	if c.IsSet("src-version") {
		src, err := versionFlag(c, "src-version")
		if err != nil {
			return nil, err
		}
		if !src.less(u.dst) {
			return nil, BadInputf("--src-version %s is not older than --dst-version %s", src, u.dst)
		}
		u.src = &src
	}
	if _, rc, ok := u.cl.RoleOf(host); ok && rc != nil && rc.ControlPlane {
		return nil, BadInputf("%s is a control node: %s", host, controlRefused)
	}
	u.selectNodes = func(names []string) ([]string, error) {
		for _, n := range names {
			if n == host {
				return []string{host}, nil
			}
		}
		return nil, BadInputf("no node %s in cluster %s", host, u.cl.Name)
	}
	if err := env.CheckAccess(u.cl); err != nil {
		return nil, err
	}
	return &Job{Cluster: u.cl.Name, Check: u.check, Plan: u.plan}, nil
}

func prepareUpgradeCluster(c *cli.Context, env *Env) (*Job, error) {
	u, err := newUpgrader(c, env, "upgrade-k8s-cluster")
	if err != nil {
		return nil, err
	}
	if u.max, err = positiveInt(c, "max-unavailable"); err != nil {
		return nil, err
	}
	if u.settle, err = nonNegativeDuration(c, "settle", 30*time.Second); err != nil {
		return nil, err
	}
	role := c.String("role")
	if role != "" {
		rc, err := u.cl.Role(role)
		if err != nil {
			return nil, BadInput(err)
		}
		if rc.ControlPlane {
			return nil, BadInputf("--role %s: %s", role, controlRefused)
		}
	}
	u.selectNodes = func(names []string) ([]string, error) {
		var out []string
		for _, n := range names {
			r, rc, ok := u.cl.RoleOf(n)
			if !ok || (rc != nil && rc.ControlPlane) || (role != "" && r != role) {
				continue
			}
			out = append(out, n)
		}
		if len(out) == 0 {
			return nil, BadInputf("no worker of cluster %s to upgrade (role %q)", u.cl.Name, role)
		}
		return out, nil
	}
	if err := env.CheckAccess(u.cl); err != nil {
		return nil, err
	}
	return &Job{Cluster: u.cl.Name, Check: u.check, Plan: u.plan}, nil
}

// skip leaves out a node already at the target version, and refuses one at neither
// version (newer than the target, or not --src-version).
func (u *upgrader) skip(n corev1.Node) (string, error) {
	have, err := parseVersion(n.Status.NodeInfo.KubeletVersion)
	if err != nil {
		return "", BadInputf("node %s: kubelet version: %w", n.Name, err)
	}
	switch {
	case have == u.dst:
		return fmt.Sprintf("node %s is already at v%s: skipping it", n.Name, u.dst), nil
	case u.src != nil && have != *u.src:
		return "", BadInputf("node %s runs kubelet v%s: neither --src-version %s nor --dst-version %s", n.Name, have, u.src, u.dst)
	case u.dst.less(have):
		return "", BadInputf("node %s runs kubelet v%s, newer than --dst-version %s", n.Name, have, u.dst)
	}
	return "", nil
}

// check refuses, with reads only and before a run is recorded, a selection that matches
// no node and a node at neither version.
func (u *upgrader) check(ctx context.Context) error {
	k, err := u.env.Kube(u.cl)
	if err != nil {
		return err
	}
	list, err := k.Nodes(ctx)
	if err != nil {
		return err
	}
	byName := map[string]corev1.Node{}
	var names []string
	for _, n := range list {
		byName[n.Name] = n
		names = append(names, n.Name)
	}
	sort.Strings(names)
	chosen, err := u.selectNodes(names)
	if err != nil {
		return err
	}
	for _, n := range chosen {
		if _, err := u.skip(byName[n]); err != nil {
			return err
		}
	}
	return nil
}

// plan is the rolling skeleton with the package upgrade as its action, and with
// --silence-cluster inside a whole-cluster silence (withClusterSilence).
func (u *upgrader) plan(ctx context.Context, v *pipeline.Values) ([]pipeline.Step, error) {
	roll := &rolling{Env: u.env, Cluster: u.cl, Job: u.job, Did: "upgraded to v" + u.dst.String(), Select: u.selectNodes,
		Skip: u.skip, Max: u.max, Settle: u.settle, Timeout: u.timeout, Force: u.force, Drain: u.drain,
		Action: func(c *clients, s pipeline.Scope, n rollNode) []pipeline.Step {
			if n.Control {
				return pipeline.One(pipeline.Step{Name: "refuse-control", Desc: pipeline.Textf("refuse control node %s", n.Name), Do: func(context.Context, *pipeline.Values) error {
					return BadInputf("%s is a control node: %s", n.Name, controlRefused)
				}})
			}
			return upgradePackages(c, s, knownNode(c, n.Name), u.dst, u.timeout)
		}}
	steps, err := roll.Plan(ctx, v)
	if err != nil || !u.silence {
		return steps, err
	}
	return withClusterSilence(roll.c, steps, "upgrade to v"+u.dst.String()), nil
}

// upgradePackages is the step set that upgrades a drained worker to dst: find-package
// (apt-cache madison), unhold, install-kubeadm, kubeadm-upgrade-node, install-kubelet
// (and kubectl), hold, daemon-reload, restart-kubelet, wait-version (the Node reports
// dst). Each step checks before it acts: the installed versions (dpkg-query), the holds
// (apt-mark showhold), the version the Node reports.
func upgradePackages(c *clients, s pipeline.Scope, n nodeRef, dst version, timeout time.Duration) []pipeline.Step {
	pkgKey := pipeline.In(s, keyPkgVersion)
	want := "v" + dst.String()
	host := func(ctx context.Context, v *pipeline.Values) (string, string, error) {
		name, err := n.Name(v)
		if err != nil {
			return "", "", err
		}
		h, err := n.Host(ctx, v)
		return name, h, err
	}
	read := func(ctx context.Context, h string, argv ...string) (string, error) {
		res, err := c.ssh.Run(ctx, h, ssh.Command{Argv: argv, ReadOnly: true, Timeout: time.Minute})
		return res.Stdout, err
	}
	write := func(ctx context.Context, h string, argv ...string) error {
		_, err := c.ssh.Run(ctx, h, ssh.Command{Argv: argv, Timeout: 10 * time.Minute})
		return err
	}
	// atTarget: the Node reports the target kubelet version already.
	atTarget := func(ctx context.Context, name string) (bool, error) {
		node, err := c.kube.Node(ctx, name)
		if err != nil {
			return false, err
		}
		return node.Status.NodeInfo.KubeletVersion == want, nil
	}
	installed := func(ctx context.Context, h string, pkgs ...string) (map[string]string, error) {
		out, err := read(ctx, h, append([]string{"dpkg-query", "-W"}, pkgs...)...)
		if err != nil {
			return nil, err
		}
		m := map[string]string{}
		for _, l := range strings.Split(out, "\n") {
			if p, ver, ok := strings.Cut(strings.TrimSpace(l), "\t"); ok {
				m[p] = ver
			}
		}
		return m, nil
	}
	held := func(ctx context.Context, h string) (map[string]bool, error) {
		out, err := read(ctx, h, "apt-mark", "showhold")
		if err != nil {
			return nil, err
		}
		m := map[string]bool{}
		for _, p := range strings.Fields(out) {
			m[p] = true
		}
		return m, nil
	}
	// setHold holds (or unholds) the Kubernetes packages that are not held (or are) yet.
	setHold := func(hold bool) pipeline.Func {
		verb := map[bool]string{true: "hold", false: "unhold"}[hold]
		return func(ctx context.Context, v *pipeline.Values) error {
			_, h, err := host(ctx, v)
			if err != nil {
				return err
			}
			hm, err := held(ctx, h)
			if err != nil {
				return err
			}
			var argv []string
			for _, p := range kubePkgs {
				if hm[p] != hold {
					argv = append(argv, p)
				}
			}
			if len(argv) == 0 {
				return pipeline.Skip("kubeadm, kubelet and kubectl: %s already", map[bool]string{true: "held", false: "not held"}[hold])
			}
			return write(ctx, h, append([]string{"apt-mark", verb}, argv...)...)
		}
	}
	install := func(ctx context.Context, v *pipeline.Values, pkgs ...string) error {
		_, h, err := host(ctx, v)
		if err != nil {
			return err
		}
		pv, err := pkgKey.Must(v)
		if err != nil {
			return err
		}
		have, err := installed(ctx, h, pkgs...)
		if err != nil {
			return err
		}
		argv := []string{"apt-get", "install", "-y"}
		for _, p := range pkgs {
			if have[p] != pv {
				argv = append(argv, p+"="+pv)
			}
		}
		if len(argv) == 3 {
			return pipeline.Skip("%s already installed at %s", strings.Join(pkgs, ", "), pv)
		}
		return write(ctx, h, argv...)
	}
	// unlessAtTarget skips a step when the Node reports the target version already.
	unlessAtTarget := func(what string, do func(ctx context.Context, name, h string) error) pipeline.Func {
		return func(ctx context.Context, v *pipeline.Values) error {
			name, h, err := host(ctx, v)
			if err != nil {
				return err
			}
			ok, err := atTarget(ctx, name)
			if err != nil {
				return err
			}
			if ok {
				return pipeline.Skip("node %s reports kubelet %s already: no %s", name, want, what)
			}
			return do(ctx, name, h)
		}
	}
	desc := func(f string) func(*pipeline.Values) string {
		return func(v *pipeline.Values) string {
			name, _ := n.Name(v)
			pv, _ := pkgKey.Get(v)
			if pv == "" {
				pv = dst.String() + "-*"
			}
			return fmt.Sprintf(f, name, pv)
		}
	}
	return []pipeline.Step{
		{Name: "find-package", Desc: pipeline.Textf("find the package version of Kubernetes %s (apt-cache madison kubeadm)", want), Do: func(ctx context.Context, v *pipeline.Values) error {
			if pv, ok := pkgKey.Get(v); ok {
				return pipeline.Skip("package version %s found already", pv)
			}
			name, h, err := host(ctx, v)
			if err != nil {
				return err
			}
			out, err := read(ctx, h, append([]string{"apt-cache", "madison"}, kubePkgs...)...)
			if err != nil {
				return err
			}
			found := map[string]string{}
			var offered []string
			for _, l := range strings.Split(out, "\n") {
				f := strings.Split(l, "|")
				if len(f) < 2 {
					continue
				}
				p, ver := strings.TrimSpace(f[0]), strings.TrimSpace(f[1])
				if p == "kubeadm" {
					offered = append(offered, ver)
				}
				if strings.HasPrefix(ver, dst.String()+"-") && found[p] == "" {
					found[p] = ver
				}
			}
			for _, p := range kubePkgs {
				if found[p] == "" || found[p] != found["kubeadm"] {
					return fmt.Errorf("node %s: no package %s=%s-* in its apt sources (kubeadm offered: %s)", name, p, dst, strings.Join(offered, ", "))
				}
			}
			c.env.Log.Info(fmt.Sprintf("node %s: Kubernetes %s is package version %s", name, want, found["kubeadm"]))
			return pkgKey.Set(v, found["kubeadm"])
		}},
		{Name: "unhold", Desc: desc("apt-mark unhold kubeadm kubelet kubectl on %s"), Do: setHold(false)},
		{Name: "install-kubeadm", Desc: desc("install kubeadm=%[2]s on %[1]s"), Do: func(ctx context.Context, v *pipeline.Values) error {
			return install(ctx, v, "kubeadm")
		}},
		{Name: "kubeadm-upgrade-node", Desc: desc("kubeadm upgrade node on %s"), Do: unlessAtTarget("kubeadm upgrade node", func(ctx context.Context, _, h string) error {
			return write(ctx, h, "kubeadm", "upgrade", "node")
		})},
		{Name: "install-kubelet", Desc: desc("install kubelet=%[2]s kubectl=%[2]s on %[1]s"), Do: func(ctx context.Context, v *pipeline.Values) error {
			return install(ctx, v, "kubelet", "kubectl")
		}},
		{Name: "hold", Desc: desc("apt-mark hold kubeadm kubelet kubectl on %s"), Do: setHold(true)},
		{Name: "daemon-reload", Desc: desc("systemctl daemon-reload on %s"), Do: unlessAtTarget("daemon-reload", func(ctx context.Context, _, h string) error {
			return write(ctx, h, "systemctl", "daemon-reload")
		})},
		{Name: "restart-kubelet", Desc: desc("systemctl restart kubelet on %s"), Do: unlessAtTarget("kubelet restart", func(ctx context.Context, _, h string) error {
			return write(ctx, h, "systemctl", "restart", "kubelet")
		})},
		{Name: "wait-version", Desc: desc("wait until %s reports kubelet " + want), Do: func(ctx context.Context, v *pipeline.Values) error {
			name, err := n.Name(v)
			if err != nil {
				return err
			}
			if c.env.DryRun {
				c.env.Log.Info(fmt.Sprintf("DRY-RUN: %s would be waited on to report kubelet %s", name, want))
				return nil
			}
			return c.kube.WaitNode(ctx, name, "to report kubelet "+want, timeout, func(node *corev1.Node) bool {
				return node != nil && node.Status.NodeInfo.KubeletVersion == want
			})
		}},
	}
}
