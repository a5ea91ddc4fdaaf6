package cookbooks

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"
	corev1 "k8s.io/api/core/v1"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/lock"
	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/k8sops"
	"example.com/cookbook/ssh"
)

// keyPkgVersion is the Debian package version of the target Kubernetes version on a node
// ("1.37.3-1.1"), found with apt-cache madison, in the node's scope.
const keyPkgVersion = pipeline.Key[string]("pkg-version")

// keySrcVersion is the kubelet version a node reported before its upgrade ("v1.37.2"),
// in the node's scope: the audit line says from what to what.
const keySrcVersion = pipeline.Key[string]("src-version")

// keyApplyNode is the control node that ran (or runs) `kubeadm upgrade apply`: the
// first control node of the run to reach its kubeadm-upgrade step while the control
// plane was older than the target. Every other node runs `kubeadm upgrade node`.
const keyApplyNode = pipeline.Key[string]("upgrade/apply-node")

// kubePkgs are the packages a Kubernetes upgrade installs and holds.
var kubePkgs = []string{"kubeadm", "kubelet", "kubectl"}

// UpgradeNode upgrades the Kubernetes packages of one node.
func UpgradeNode() Cookbook {
	return Cookbook{
		Name:    "upgrade-k8s-node",
		Usage:   "upgrade a node's kubeadm, kubelet and kubectl: cordon, drain, install, kubeadm upgrade apply (the first control node) or node, restart kubelet, wait for the new version, uncordon",
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

// UpgradeCluster upgrades the Kubernetes packages of a cluster: control nodes one at a
// time, then workers in batches.
func UpgradeCluster() Cookbook {
	return Cookbook{
		Name:    "upgrade-k8s-cluster",
		Usage:   "upgrade a cluster's Kubernetes: control nodes one at a time (the first with kubeadm upgrade apply), then workers in batches of --max-unavailable, with health gates",
		Example: "cookbook upgrade-k8s-cluster --cluster-name toolsbeta --dst-version 1.37.3 --max-unavailable 2",
		Flags: append([]cli.Flag{
			clusterFlag(),
			&cli.StringFlag{Name: "dst-version", Usage: "the Kubernetes version to upgrade to (X.Y.Z)"},
			&cli.StringFlag{Name: "role", Usage: "only the nodes of this role; default every role"},
			&cli.BoolFlag{Name: "workers-only", Usage: "only the nodes of non-control roles (the control plane must be at --dst-version already)"},
			&cli.BoolFlag{Name: "control-only", Usage: "only the control nodes"},
			&cli.StringFlag{Name: "hostname-list", Usage: "only these nodes (commas or spaces)"},
			&cli.IntFlag{Name: "batches", Usage: "split the selected workers (natural order) into K nearly equal chunks; with --batch-number"},
			&cli.IntFlag{Name: "batch-number", Usage: "the chunk (1..K) of --batches this run upgrades"},
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
		healthWindowFlag(),
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
	window  time.Duration
	timeout time.Duration
	force   bool
	drain   k8sops.DrainOptions
	// silence is --silence-cluster.
	silence bool

	selectNodes func(names []string) ([]string, error)
	// pinned, when not nil, are the nodes the run claimed (a chunk): its plan takes them.
	pinned map[string]bool
	roll   *rolling
}

// close stops what the run's rolling skeleton started (the job's Close).
func (u *upgrader) close() {
	if u.roll != nil {
		u.roll.Close()
	}
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
	if u.drain, err = drainOptions(c, cl); err != nil {
		return nil, err
	}
	if u.timeout, err = positiveDuration(c, "timeout", 10*time.Minute); err != nil {
		return nil, err
	}
	if u.window, err = positiveDuration(c, "health-window", k8sops.DefaultHealthWindow); err != nil {
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
	return &Job{Cluster: u.cl.Name, Check: u.check, Plan: u.plan, Close: u.close}, nil
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
	workersOnly, controlOnly := c.Bool("workers-only"), c.Bool("control-only")
	if workersOnly && controlOnly {
		return nil, BadInputf("--workers-only and --control-only: give one of them, not both")
	}
	role, rc, err := roleFlag(c, u.cl)
	if err != nil {
		return nil, err
	}
	if rc != nil {
		if rc.ControlPlane && workersOnly || !rc.ControlPlane && controlOnly {
			return nil, BadInputf("--role %s does not go with --workers-only or --control-only", role)
		}
	}
	list, err := hostnameList(c, "hostname-list")
	if err != nil {
		return nil, err
	}
	chunks, chunk := c.Int("batches"), c.Int("batch-number")
	switch {
	case c.IsSet("batches") != c.IsSet("batch-number"):
		return nil, BadInputf("--batches and --batch-number go together")
	case c.IsSet("batches") && chunks < 1:
		return nil, BadInputf("--batches %d: want a positive number", chunks)
	case c.IsSet("batches") && (chunk < 1 || chunk > chunks):
		return nil, BadInputf("--batch-number %d: want 1 to --batches %d", chunk, chunks)
	case c.IsSet("batches") && controlOnly:
		return nil, BadInputf("--batches splits workers: it does not go with --control-only")
	}
	listed := map[string]bool{}
	for _, h := range list {
		listed[h] = true
	}
	u.selectNodes = func(names []string) ([]string, error) {
		have := map[string]bool{}
		var out []string
		for _, n := range names {
			have[n] = true
			r, rc, ok := u.cl.RoleOf(n)
			control := rc != nil && rc.ControlPlane
			if !ok || (role != "" && r != role) || (workersOnly && control) || (controlOnly && !control) || (list != nil && !listed[n]) || (chunks > 0 && control) {
				continue
			}
			out = append(out, n)
		}
		for _, h := range list {
			if !have[h] {
				return nil, BadInputf("--hostname-list: no node %s in cluster %s", h, u.cl.Name)
			}
		}
		if chunks > 0 && u.pinned != nil {
			var mine []string
			for _, n := range out {
				if u.pinned[n] {
					mine = append(mine, n)
				}
			}
			out = mine
		} else if chunks > 0 {
			out = chunkOf(out, chunks, chunk)
		}
		if len(out) == 0 {
			return nil, BadInputf("no node of cluster %s to upgrade (role %q, --workers-only %v, --control-only %v, --hostname-list %q, chunk %d of %d)", u.cl.Name, role, workersOnly, controlOnly, c.String("hostname-list"), chunk, chunks)
		}
		return out, nil
	}
	if err := env.CheckAccess(u.cl); err != nil {
		return nil, err
	}
	j := &Job{Cluster: u.cl.Name, Check: u.check, Plan: u.plan, Close: u.close}
	if chunks > 0 {
		// Chunks of one upgrade share the cluster's lock when their nodes are disjoint.
		j.ClaimJob = fmt.Sprintf("upgrade-k8s-cluster of workers to v%s", u.dst)
		j.Claim = func(ctx context.Context, recorded *lock.Claim) (*lock.Claim, error) {
			if recorded != nil {
				// A resume: the recorded plan, or, if the run stopped before it was
				// recorded, a plan of the claimed nodes.
				u.pin(recorded.Nodes)
				return recorded, nil
			}
			nodes, err := u.chunkNodes(ctx)
			if err != nil {
				return nil, err
			}
			return lock.NewClaim(j.ClaimJob, nodes), nil
		}
	}
	return j, nil
}

// chunkNodes reads the cluster's nodes and returns the run's chunk, which its plan then
// takes (pinned): the nodes it claims of the cluster's lock.
func (u *upgrader) chunkNodes(ctx context.Context) ([]string, error) {
	c, err := newClients(ctx, u.env, u.cl)
	if err != nil {
		return nil, err
	}
	defer c.ssh.Shutdown() // its agent connection: the run makes its own clients
	list, err := c.kube.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, n := range list {
		names = append(names, n.Name)
	}
	sort.Strings(names)
	nodes, err := u.selectNodes(names)
	if err != nil {
		return nil, err
	}
	u.pin(nodes)
	return nodes, nil
}

// pin makes the run's plan take nodes (those of its chunk still in the cluster).
func (u *upgrader) pin(nodes []string) {
	u.pinned = map[string]bool{}
	for _, n := range nodes {
		u.pinned[n] = true
	}
}

// chunkOf is the i-th (1-based) of k nearly equal chunks of names in natural order
// (worker-2 before worker-10), as the Toolforge upgrade_workers cookbook splits them:
// the first len%k chunks have one node more.
func chunkOf(names []string, k, i int) []string {
	sorted := append([]string(nil), names...)
	sort.SliceStable(sorted, func(a, b int) bool { return lessByNumber(sorted[a], sorted[b]) })
	size, extra := len(sorted)/k, len(sorted)%k
	start := (i-1)*size + min(i-1, extra)
	end := start + size
	if i <= extra {
		end++
	}
	return sorted[start:end]
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

// check is the preflight, with reads only and before a run is recorded (also in a
// dry-run): every problem found is listed at once, as bad input (exit 2). It refuses a
// selection that matches no node, a node at neither version; the version skew policy:
// a target that skips a minor or is older than the control plane, kubelets upgraded while
// the control plane stays older (a selection without the control nodes), a kubelet
// newer than the control plane, a node left more than three minors behind the target;
// a node to upgrade without the target packages in its apt sources (apt-cache madison);
// a node that is not Ready; a PodDisruptionBudget at zero allowed disruptions that covers
// pods of a node to upgrade, and pods the drain could not evict.
func (u *upgrader) check(ctx context.Context) error {
	c, err := newClients(ctx, u.env, u.cl)
	if err != nil {
		return err
	}
	// Its connections to every node to upgrade (apt-cache madison) and its agent
	// connection: the run makes its own clients.
	defer c.ssh.Shutdown()
	k := c.kube
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
	var problems []string
	add := func(f string, a ...any) { problems = append(problems, fmt.Sprintf(f, a...)) }
	in := map[string]bool{}
	var todo []string
	for _, n := range chosen {
		in[n] = true
		reason, err := u.skip(byName[n])
		if err != nil {
			add("%v", err)
			continue
		}
		if reason == "" {
			todo = append(todo, n)
		}
	}

	// The version skew policy.
	want := "v" + u.dst.String()
	cvs, err := k.ClusterVersion(ctx)
	if err != nil {
		add("the control plane's version: %v", err)
	} else {
		var nodes []skewNode
		for _, n := range names {
			_, rc, _ := u.cl.RoleOf(n)
			nodes = append(nodes, skewNode{Name: n, Kubelet: byName[n].Status.NodeInfo.KubeletVersion, Control: rc != nil && rc.ControlPlane, Selected: in[n]})
		}
		todoSet := map[string]bool{}
		for _, n := range todo {
			todoSet[n] = true
		}
		for i := range nodes {
			nodes[i].ToDo = todoSet[nodes[i].Name]
		}
		problems = append(problems, skewProblems(cvs, u.dst, nodes)...)
	}

	// Every node Ready, but those another chunk of this upgrade holds (restarting
	// their kubelets now).
	others := u.env.others(ctx)
	for _, n := range names {
		node := byName[n]
		if !nodeReady(&node) && !others[n] {
			add("node %s is not Ready", n)
		}
	}

	// The packages and the drains of the nodes to upgrade.
	type found struct {
		node, problem string
	}
	results := make([]found, len(todo))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, n := range todo {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i] = found{node: n}
			h, err := c.target(ctx, n)
			if err != nil {
				results[i].problem = fmt.Sprintf("node %s: %v", n, err)
				return
			}
			res, err := c.ssh.Run(ctx, h, ssh.Command{Argv: append([]string{"apt-cache", "madison"}, kubePkgs...), ReadOnly: true, Timeout: time.Minute})
			if err != nil {
				results[i].problem = fmt.Sprintf("node %s: apt-cache madison: %v", n, err)
				return
			}
			if _, err := madisonVersion(res.Stdout, u.dst); err != nil {
				results[i].problem = fmt.Sprintf("node %s: %v", n, err)
			}
		}()
	}
	wg.Wait()
	for _, r := range results {
		if r.problem != "" {
			add("%s", r.problem)
		}
	}
	for _, n := range todo {
		p, err := k.PlanDrain(ctx, n, u.drain)
		if err != nil {
			add("node %s: %v", n, err)
			continue
		}
		for _, pdb := range p.PDBs {
			problem, warning := pdbPreflight(n, pdb, len(others) > 0)
			if problem != "" {
				add("%s", problem)
			}
			if warning != "" {
				u.env.Log.Warn(warning)
			}
		}
		for _, b := range p.Blocking {
			add("node %s: the drain cannot evict: %s", n, b)
		}
	}
	for _, n := range todo {
		if _, rc, _ := u.cl.RoleOf(n); rc != nil && rc.ControlPlane {
			// A control node will be upgraded: etcd must be healthy first.
			problems = append(problems, etcdPreflight(ctx, c)...)
			break
		}
	}
	if len(problems) > 0 {
		return BadInputf("preflight of the upgrade of %s to %s: %d problem(s), nothing was changed:\n  - %s", u.cl.Name, want, len(problems), strings.Join(problems, "\n  - "))
	}
	u.env.Log.Info(fmt.Sprintf("preflight of the upgrade of %s to %s: no problem; control plane at %s, %d node(s) to upgrade: %s", u.cl.Name, want, cvs, len(todo), strings.Join(todo, ", ")))
	return nil
}

// pdbPreflight is what the preflight makes of a disruption budget that covers pods of
// node, a node to upgrade: a problem (the run is refused), a warning (it goes on), or
// neither. othersRun says whether another chunk of this upgrade runs now.
func pdbPreflight(node string, pdb k8sops.PDBState, othersRun bool) (problem, warning string) {
	switch {
	case pdb.DisruptionsAllowed > 0:
		return "", ""
	case pdb.ExpectedPods > 0 && pdb.ExpectedPods <= pdb.DesiredHealthy:
		// minAvailable of all its pods, maxUnavailable 0: no eviction ever passes.
		return fmt.Sprintf("node %s: PodDisruptionBudget %s can never allow a disruption: it expects %d pod(s) and wants %d healthy; its drain would wait until --timeout",
			node, pdb, pdb.ExpectedPods, pdb.DesiredHealthy), ""
	case othersRun && pdb.CurrentHealthy < pdb.ExpectedPods:
		// Another chunk drains now: its evictions use the budget for a
		// while (a pod of it is down); this run's drain waits for it.
		return "", fmt.Sprintf("node %s: PodDisruptionBudget %s allows no disruption now, while another chunk of this upgrade runs; its drain will wait for it", node, pdb)
	}
	return fmt.Sprintf("node %s: PodDisruptionBudget %s would block its drain", node, pdb), ""
}

// skewNode is what the skew policy looks at of a node.
type skewNode struct {
	Name, Kubelet string
	// Control: a control node; Selected: chosen by the run; ToDo: chosen and not at the
	// target yet.
	Control, Selected, ToDo bool
}

// skewProblems are the version skew policy's objections to upgrading the ToDo nodes to
// dst while the control plane is at cvs (kubeadm-config): a downgrade, a skipped minor,
// a kubelet of a newer minor than the control plane, a node left more than three minors
// behind dst, kubelets upgraded while a control node the run does not take is not at dst.
func skewProblems(cvs string, dst version, nodes []skewNode) []string {
	var problems []string
	add := func(f string, a ...any) { problems = append(problems, fmt.Sprintf(f, a...)) }
	cv, err := parseVersion(cvs)
	if err != nil {
		return []string{fmt.Sprintf("the control plane's version in kube-system/kubeadm-config: %v", err)}
	}
	want := "v" + dst.String()
	switch {
	case dst.less(cv):
		add("--dst-version %s is older than the control plane (%s in kube-system/kubeadm-config): downgrades are not supported", dst, cvs)
	case dst[0] != cv[0] || dst[1] > cv[1]+1:
		add("--dst-version %s skips a minor: the control plane is at %s and kubeadm upgrades one minor at a time (upgrade to %d.%d.x first)", dst, cvs, cv[0], cv[1]+1)
	}
	controlsLeft, workersToDo := false, false
	for _, n := range nodes {
		kv, err := parseVersion(n.Kubelet)
		if err != nil {
			add("node %s: kubelet version: %v", n.Name, err)
			continue
		}
		if n.Control && !n.Selected && kv != dst {
			controlsLeft = true
		}
		if !n.Control && n.ToDo {
			workersToDo = true
		}
		if kv[0] > cv[0] || kv[0] == cv[0] && kv[1] > cv[1] {
			add("node %s: kubelet %s is of a newer minor than the control plane (%s): the skew policy forbids it", n.Name, n.Kubelet, cvs)
		}
		if !n.Selected && kv[0] == dst[0] && kv[1]+3 < dst[1] {
			add("node %s: kubelet %s is not upgraded by this run and would be more than three minors older than the API server at %s", n.Name, n.Kubelet, want)
		}
	}
	if controlsLeft && workersToDo {
		add("the control plane is at %s and not every control node at %s: upgrade the control nodes before any other kubelet (run without --workers-only, --role, --hostname-list or --batches, or with --control-only first)", cvs, want)
	}
	return problems
}

// etcdPreflight is the etcd health check of the preflight: every member started and
// healthy (etcdctl over SSH on a control node; see checkEtcd), its problems if not.
func etcdPreflight(ctx context.Context, c *clients) []string {
	st, from, err := c.etcdStatus(ctx)
	if err != nil {
		return []string{fmt.Sprintf("etcd: %v", err)}
	}
	var problems []string
	for _, p := range st.Problems() {
		problems = append(problems, fmt.Sprintf("etcd member %s (asked on %s)", p, from))
	}
	return problems
}

// nodeReady reports whether the node's Ready condition is True.
func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// madisonVersion finds in `apt-cache madison kubeadm kubelet kubectl` output the package
// version of dst that all three packages offer ("1.37.3-1.1"), the newest in madison's
// order (newest first) when they share several revisions. None is an error naming the
// package without dst, or, when each has dst, the revisions each has.
func madisonVersion(out string, dst version) (string, error) {
	found := map[string][]string{}
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
		if strings.HasPrefix(ver, dst.String()+"-") && !slices.Contains(found[p], ver) {
			found[p] = append(found[p], ver)
		}
	}
	for _, p := range kubePkgs {
		if len(found[p]) == 0 {
			return "", fmt.Errorf("no package %s=%s-* in its apt sources (kubeadm offered: %s)", p, dst, strings.Join(offered, ", "))
		}
	}
	for _, ver := range found["kubeadm"] {
		all := true
		for _, p := range kubePkgs {
			all = all && slices.Contains(found[p], ver)
		}
		if all {
			return ver, nil
		}
	}
	var each []string
	for _, p := range kubePkgs {
		each = append(each, p+" "+strings.Join(found[p], ", "))
	}
	return "", fmt.Errorf("kubeadm, kubelet and kubectl have no package version of %s in common in its apt sources: %s", dst, strings.Join(each, "; "))
}

// parseDpkgStatus reads `dpkg-query -W -f '${Package}\t${Version}\t${db:Status-Abbrev}\n'`:
// the versions of the packages installed and configured (status i, whatever the
// selection: "ii " or held "hi "), and the packages in any other state (half-configured
// "iF ", unpacked "iU ", half-installed "iH ", or with dpkg's reinstall-required flag),
// whose version is not installed yet.
func parseDpkgStatus(out string) (map[string]string, []string, error) {
	ok := map[string]string{}
	var broken []string
	for _, l := range strings.Split(out, "\n") {
		if l == "" {
			continue
		}
		f := strings.Split(l, "\t")
		if len(f) != 3 || len(f[2]) != 3 {
			return nil, nil, fmt.Errorf("dpkg-query: unexpected line %q (want package, version, status)", l)
		}
		if f[2][1] == 'i' && f[2][2] == ' ' {
			ok[f[0]] = f[1]
		} else {
			broken = append(broken, fmt.Sprintf("%s %s (%s)", f[0], f[1], strings.TrimSpace(f[2])))
		}
	}
	return ok, broken, nil
}

// plan is the rolling skeleton with the package upgrade as its action, and with
// --silence-cluster inside a whole-cluster silence (withClusterSilence).
func (u *upgrader) plan(ctx context.Context, v *pipeline.Values) ([]pipeline.Step, error) {
	roll := &rolling{Env: u.env, Cluster: u.cl, Job: u.job, Did: "upgraded to v" + u.dst.String(), Select: u.selectNodes,
		Skip: u.skip, Max: u.max, Settle: u.settle, Timeout: u.timeout, Force: u.force, Drain: u.drain, ControlFirst: true, Gate: k8sops.GateOptions{Window: u.window},
		Action: func(c *clients, s pipeline.Scope, n rollNode) []pipeline.Step {
			return upgradePackages(c, s, knownNode(c, n.Name), n.Control, u.dst, u.timeout)
		}}
	u.roll = roll
	steps, err := roll.Plan(ctx, v)
	if err != nil || !u.silence {
		return steps, err
	}
	return withClusterSilence(roll.c, steps, "upgrade to v"+u.dst.String()), nil
}

// upgradePackages is the step set that upgrades a drained node to dst: find-package
// (apt-cache madison), unhold, install-kubeadm, kubeadm-upgrade-node on a worker (on a
// control node: kubeadm-upgrade, the plan and apply of the first or upgrade node of the
// others, then wait-static-pods), install-kubelet (and kubectl), hold, daemon-reload,
// restart-kubelet, wait-version (the Node reports dst), audit-node. Each step checks
// before it acts: the installed versions (dpkg-query), the holds (apt-mark showhold),
// the version the Node reports, the static pods' versions.
func upgradePackages(c *clients, s pipeline.Scope, n nodeRef, control bool, dst version, timeout time.Duration) []pipeline.Step {
	srcKey := pipeline.In(s, keySrcVersion)
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
	// installed are the versions of the packages dpkg has installed and configured, and
	// those it has unpacked but not configured (an apt-get install killed midway: its
	// dpkg dies of SIGPIPE once the session is gone, leaving them half-configured).
	installed := func(ctx context.Context, h string, pkgs ...string) (ok map[string]string, broken []string, err error) {
		out, err := read(ctx, h, append([]string{"dpkg-query", "-W", "-f", `${Package}\t${Version}\t${db:Status-Abbrev}\n`}, pkgs...)...)
		if err != nil {
			return nil, nil, err
		}
		return parseDpkgStatus(out)
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
		name, h, err := host(ctx, v)
		if err != nil {
			return err
		}
		pv, err := pkgKey.Must(v)
		if err != nil {
			return err
		}
		have, broken, err := installed(ctx, h, pkgs...)
		if err != nil {
			return err
		}
		if len(broken) > 0 {
			// apt refuses anything until dpkg has finished what it was doing.
			c.env.Log.Warn(fmt.Sprintf("node %s: dpkg was interrupted: %s not configured; running dpkg --configure -a", name, strings.Join(broken, ", ")))
			if err := write(ctx, h, "dpkg", "--configure", "-a"); err != nil {
				return err
			}
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
	first := []pipeline.Step{
		{Name: "find-package", Desc: pipeline.Textf("find the package version of Kubernetes %s (apt-cache madison kubeadm)", want), Do: func(ctx context.Context, v *pipeline.Values) error {
			if pv, ok := pkgKey.Get(v); ok {
				return pipeline.Skip("package version %s found already", pv)
			}
			name, h, err := host(ctx, v)
			if err != nil {
				return err
			}
			if _, ok := srcKey.Get(v); !ok {
				node, err := c.kube.Node(ctx, name)
				if err != nil {
					return err
				}
				if err := srcKey.Set(v, node.Status.NodeInfo.KubeletVersion); err != nil {
					return err
				}
			}
			out, err := read(ctx, h, append([]string{"apt-cache", "madison"}, kubePkgs...)...)
			if err != nil {
				return err
			}
			pv, err := madisonVersion(out, dst)
			if err != nil {
				return fmt.Errorf("node %s: %w", name, err)
			}
			c.env.Log.Info(fmt.Sprintf("node %s: Kubernetes %s is package version %s", name, want, pv))
			return pkgKey.Set(v, pv)
		}},
		{Name: "unhold", Desc: desc("apt-mark unhold kubeadm kubelet kubectl on %[1]s"), Do: setHold(false)},
		{Name: "install-kubeadm", Desc: desc("install kubeadm=%[2]s on %[1]s"), Do: func(ctx context.Context, v *pipeline.Values) error {
			return install(ctx, v, "kubeadm")
		}},
	}
	var kubeadm []pipeline.Step
	if control {
		kubeadm = kubeadmControl(c, n, dst, timeout)
	} else {
		kubeadm = pipeline.One(pipeline.Step{Name: "kubeadm-upgrade-node", Desc: desc("kubeadm upgrade node on %[1]s"), Do: unlessAtTarget("kubeadm upgrade node", func(ctx context.Context, _, h string) error {
			// kubeadm upgrade node takes the node to the control plane's version,
			// whatever it is (it refuses only a control plane older than the minor
			// before kubeadm's): a worker before the control plane would get a
			// kubelet newer than the API server. Refused here, to resume later (a
			// dry-run's control nodes were not upgraded: not asked).
			if !c.env.DryRun {
				cvs, err := c.kube.ClusterVersion(ctx)
				if err != nil {
					return err
				}
				if cv, err := parseVersion(cvs); err == nil && cv.less(dst) {
					return fmt.Errorf("the control plane of %s is at %s, older than %s: upgrade the control nodes first (upgrade-k8s-cluster --control-only), then resume this run", c.cl.Name, cvs, want)
				}
			}
			return write(ctx, h, "kubeadm", "upgrade", "node")
		})})
	}
	last := []pipeline.Step{
		{Name: "install-kubelet", Desc: desc("install kubelet=%[2]s kubectl=%[2]s on %[1]s"), Do: func(ctx context.Context, v *pipeline.Values) error {
			return install(ctx, v, "kubelet", "kubectl")
		}},
		{Name: "hold", Desc: desc("apt-mark hold kubeadm kubelet kubectl on %[1]s"), Do: setHold(true)},
		{Name: "daemon-reload", Desc: desc("systemctl daemon-reload on %[1]s"), Do: unlessAtTarget("daemon-reload", func(ctx context.Context, _, h string) error {
			return write(ctx, h, "systemctl", "daemon-reload")
		})},
		{Name: "restart-kubelet", Desc: desc("systemctl restart kubelet on %[1]s"), Do: unlessAtTarget("kubelet restart", func(ctx context.Context, _, h string) error {
			return write(ctx, h, "systemctl", "restart", "kubelet")
		})},
		{Name: "wait-version", Desc: desc("wait until %[1]s reports kubelet " + want), Do: func(ctx context.Context, v *pipeline.Values) error {
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
		{Name: "audit-node", Desc: desc("tell the team: %[1]s upgraded to " + want), Do: func(ctx context.Context, v *pipeline.Values) error {
			name, err := n.Name(v)
			if err != nil {
				return err
			}
			from, _ := srcKey.Get(v)
			line := fmt.Sprintf("upgraded node %s from Kubernetes %s to %s", name, from, want)
			if c.env.DryRun {
				c.env.Gate.Would(ctx, "send audit line: "+line)
				return nil
			}
			c.env.Audit.Send(ctx, line)
			return nil
		}},
	}
	return pipeline.Steps(first, kubeadm, last)
}

// confirmApply asks the operator question q before kubeadm upgrade apply want on node:
// nil when confirmed, else the error the step fails with, saying why.
func confirmApply(env *Env, q, want, node string) error {
	ok, err := false, fmt.Errorf("no one to ask")
	if env.Ask != nil {
		ok, err = env.Ask(q)
	}
	why := "answered no"
	switch {
	case err != nil:
		why = err.Error()
	case ok:
		return nil
	}
	return fmt.Errorf("kubeadm upgrade apply %s on %s not confirmed (%s): the node stays drained; `cookbook resume` asks again, or resume with --yes", want, node, why)
}

// kubeadmControl is what a control node does between install-kubeadm and
// install-kubelet. kubeadm-upgrade: while the control plane (kubeadm-config) is older
// than dst, the first control node of the run to get here runs `kubeadm upgrade plan
// vX` (its output logged) and, once confirmed (--yes, or the operator at the terminal),
// `kubeadm upgrade apply vX -y`; once the control plane is at dst, `kubeadm upgrade node`;
// skipped when the node's static pods run dst already. wait-static-pods: until the
// node's kube-apiserver, kube-controller-manager and kube-scheduler mirror pods run dst.
// etcd is checked before and after them by the rolling skeleton: a control node's batch
// starts with check-etcd and ends with check-etcd-after (cookbooks/etcdsteps.go).
func kubeadmControl(c *clients, n nodeRef, dst version, timeout time.Duration) []pipeline.Step {
	want := "v" + dst.String()
	atTarget := func(pods map[string]string) bool {
		for _, comp := range k8sops.ControlPlaneComponents {
			if pods[comp] != want {
				return false
			}
		}
		return true
	}
	run := func(ctx context.Context, h string, argv ...string) (string, error) {
		res, err := c.ssh.Run(ctx, h, ssh.Command{Argv: argv, Timeout: 15 * time.Minute})
		return res.Stdout, err
	}
	upgrade := pipeline.Step{Name: "kubeadm-upgrade", Desc: func(v *pipeline.Values) string {
		name, _ := n.Name(v)
		return fmt.Sprintf("kubeadm upgrade plan %[2]s and apply %[2]s -y on %[1]s if the control plane is older, else kubeadm upgrade node", name, want)
	}, Do: func(ctx context.Context, v *pipeline.Values) error {
		name, err := n.Name(v)
		if err != nil {
			return err
		}
		h, err := n.Host(ctx, v)
		if err != nil {
			return err
		}
		pods, err := c.kube.StaticPods(ctx, name)
		if err != nil {
			return err
		}
		cvs, err := c.kube.ClusterVersion(ctx)
		if err != nil {
			return err
		}
		cv, err := parseVersion(cvs)
		if err != nil {
			return fmt.Errorf("kube-system/kubeadm-config kubernetesVersion: %w", err)
		}
		if dst.less(cv) {
			return fmt.Errorf("the control plane is at %s, newer than %s", cvs, want)
		}
		if cv == dst && atTarget(pods) {
			return pipeline.Skip("node %s: the control plane and its static pods run %s already", name, want)
		}
		if cv != dst {
			applier, ok := keyApplyNode.Get(v)
			if !ok {
				applier = name
				if err := keyApplyNode.Set(v, name); err != nil {
					return err
				}
			}
			if applier == name {
				out, err := run(ctx, h, "kubeadm", "upgrade", "plan", want)
				if err != nil {
					return err
				}
				for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
					if l != "" {
						c.env.Log.Info("kubeadm upgrade plan: "+l, "node", name)
					}
				}
				if !c.env.DryRun && !c.env.Yes {
					q := fmt.Sprintf("Upgrade the control plane of %s from %s to %s (kubeadm upgrade apply %s -y on %s)?", c.cl.Name, cvs, want, want, name)
					if err := confirmApply(c.env, q, want, name); err != nil {
						return err
					}
				}
				_, err = run(ctx, h, "kubeadm", "upgrade", "apply", want, "-y")
				return err
			}
			if !c.env.DryRun { // in a dry-run, the apply on the applier was not done
				return fmt.Errorf("the control plane is at %s, not %s: %s runs kubeadm upgrade apply first", cvs, want, applier)
			}
		}
		_, err = run(ctx, h, "kubeadm", "upgrade", "node")
		return err
	}}
	wait := pipeline.Step{Name: "wait-static-pods", Desc: func(v *pipeline.Values) string {
		name, _ := n.Name(v)
		return fmt.Sprintf("wait until the static pods %s of %s run %s", strings.Join(k8sops.ControlPlaneComponents, ", "), name, want)
	}, Do: func(ctx context.Context, v *pipeline.Values) error {
		name, err := n.Name(v)
		if err != nil {
			return err
		}
		if c.env.DryRun {
			c.env.Log.Info(fmt.Sprintf("DRY-RUN: the static pods of %s would be waited on to run %s", name, want))
			return nil
		}
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			pods, err := c.kube.StaticPods(ctx, name)
			if err == nil && atTarget(pods) {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("static pods of %s not running %s after %s (running: %v, last error: %v)", name, want, timeout, pods, err)
			case <-tick.C:
			}
		}
	}}
	return []pipeline.Step{upgrade, wait}
}
