package cookbooks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"github.com/urfave/cli/v2"
	corev1 "k8s.io/api/core/v1"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/k8sops"
)

// keyNodeBootIDBefore is the boot id a node's Node reported before the run hard-rebooted
// it (a node SSH cannot reach has no other): "<node>/node-boot-id-before".
const keyNodeBootIDBefore = pipeline.Key[string]("node-boot-id-before")

// keyNodeHardRebootIssued records that the run sent the node's hard reboot through
// OpenStack, in the same scope ("<node>/node-hard-reboot-issued"), set before the request
// goes out: a run killed once Nova has it waits for the node on resume instead of
// rebooting it again.
const keyNodeHardRebootIssued = pipeline.Key[bool]("node-hard-reboot-issued")

// RebootStuckWorkers reboots the workers that have been NotReady for too long, on the
// rolling skeleton: a hard reboot through OpenStack for those SSH cannot reach, a soft
// reboot proven by a new boot id for the others.
func RebootStuckWorkers() Cookbook {
	return Cookbook{
		Name:    "reboot-stuck-workers",
		Usage:   "reboot the workers NotReady for longer than --not-ready-for, and those the cluster's Prometheus query reports (hard through OpenStack when SSH cannot reach them)",
		Example: "cookbook reboot-stuck-workers --cluster-name toolsbeta --not-ready-for 10m",
		Flags: append([]cli.Flag{
			clusterFlag(),
			&cli.DurationFlag{Name: "not-ready-for", Value: 10 * time.Minute, Usage: "a worker NotReady for longer than this is stuck"},
			&cli.StringFlag{Name: "query", Usage: "PromQL `QUERY` asked of the cluster's Prometheus instead of its configured one: a worker (its instance label: hostname, FQDN or InternalIP, with or without :port) with a value above zero is stuck"},
			&cli.IntFlag{Name: "max-unavailable", Value: 1, Usage: "nodes taken down at once (counting nodes an administrator cordoned)"},
			&cli.DurationFlag{Name: "settle", Value: 0, Usage: "pause after each batch's health gate"},
			&cli.DurationFlag{Name: "reboot-timeout", Value: 10 * time.Minute, Usage: "how long a node may take to come back"},
			&cli.BoolFlag{Name: "force-uncordon", Usage: "also uncordon nodes an administrator had cordoned before the run"},
		}, drainFlags()...),
		Prepare: prepareRebootStuck,
	}
}

// stuckRebooter is one reboot-stuck-workers job.
type stuckRebooter struct {
	env         *Env
	cl          *config.Cluster
	notReadyFor time.Duration
	roll        *rolling
	stuck       []string          // found once, before the confirmation or the plan
	why         map[string]string // why each stuck worker was picked
	prom        *config.Prometheus
	query       string
}

func prepareRebootStuck(c *cli.Context, env *Env) (*Job, error) {
	cl, err := env.Cluster(c.String("cluster-name"))
	if err != nil {
		return nil, err
	}
	s := &stuckRebooter{env: env, cl: cl, prom: cl.Prometheus}
	if s.notReadyFor, err = positiveDuration(c, "not-ready-for", 10*time.Minute); err != nil {
		return nil, err
	}
	if c.IsSet("query") {
		if s.prom == nil {
			return nil, BadInputf("--query: cluster %s has no prometheus url in the configuration (%s)", cl.Name, env.ConfigPath)
		}
		if s.query = strings.TrimSpace(c.String("query")); s.query == "" {
			return nil, BadInputf("--query: empty (expected a PromQL query such as %s)", config.DefaultStuckQuery)
		}
	} else if s.prom != nil {
		s.query = s.prom.StuckQuery()
	}
	r := &rolling{Env: env, Cluster: cl, Job: "reboot-stuck-workers", Did: "rebooted", Force: c.Bool("force-uncordon")}
	if r.Drain, err = drainOptions(c, cl); err != nil {
		return nil, err
	}
	if r.Max, err = positiveInt(c, "max-unavailable"); err != nil {
		return nil, err
	}
	if r.Settle, err = nonNegativeDuration(c, "settle", 30*time.Second); err != nil {
		return nil, err
	}
	if r.Timeout, err = positiveDuration(c, "reboot-timeout", 10*time.Minute); err != nil {
		return nil, err
	}
	r.Select = s.selectStuck
	r.Action = func(c *clients, sc pipeline.Scope, n rollNode) []pipeline.Step {
		return []pipeline.Step{s.rebootStep(c, sc, n.Name, r.Timeout)}
	}
	s.roll = r
	if err := env.CheckAccess(cl); err != nil {
		return nil, err
	}
	return &Job{Cluster: cl.Name, Confirm: s.confirm, Plan: s.plan}, nil
}

// find lists the workers (nodes of roles that are not control planes) whose Ready
// condition has not been True for longer than notReadyFor; none is bad input.
func (s *stuckRebooter) find(ctx context.Context) error {
	if s.stuck != nil {
		return nil
	}
	k, err := s.env.Kube(s.cl)
	if err != nil {
		return err
	}
	nodes, err := k.Nodes(ctx)
	if err != nil {
		return err
	}
	var reported map[string]float64
	if s.prom != nil {
		if reported, err = queryStuck(ctx, s.env.Log, s.prom.URL, s.query); err != nil {
			return err
		}
	}
	now := time.Now()
	var workers []*corev1.Node
	for i := range nodes {
		if _, role, ok := s.cl.RoleOf(nodes[i].Name); ok && !role.ControlPlane {
			workers = append(workers, &nodes[i])
		}
	}
	byNode, foreign := matchInstances(reported, workers, s.cl.FQDN, nil)
	if slices.ContainsFunc(foreign, isIP) {
		// An address no Node reports as its InternalIP: maybe its server's.
		servers, err := s.serverAddresses(ctx)
		if err != nil {
			return err
		}
		byNode, foreign = matchInstances(reported, workers, s.cl.FQDN, servers)
	}
	why := map[string]string{}
	for _, n := range workers {
		var reasons []string
		if since, stuck := notReadySince(n); stuck && now.Sub(since) > s.notReadyFor {
			reasons = append(reasons, "NotReady for "+ShortDuration(now.Sub(since).Round(time.Second)))
		}
		if v, ok := byNode[n.Name]; ok {
			reasons = append(reasons, fmt.Sprintf("Prometheus query returned %g", v))
		}
		if len(reasons) > 0 {
			why[n.Name] = strings.Join(reasons, ", ")
			s.env.Log.Info("stuck worker", "node", n.Name, "why", why[n.Name])
		}
	}
	for _, inst := range foreign {
		s.env.Log.Info("Prometheus reports an instance that is no worker of the cluster; left alone", "instance", inst, "value", reported[inst])
	}
	s.stuck = []string{}
	for n := range why {
		s.stuck = append(s.stuck, n)
	}
	sort.Strings(s.stuck)
	s.why = why
	if len(s.stuck) == 0 {
		if s.prom != nil {
			return BadInputf("no worker of cluster %s has been NotReady for more than %s (--not-ready-for) nor is reported by %s at %s", s.cl.Name, ShortDuration(s.notReadyFor), s.query, s.prom.URL)
		}
		return BadInputf("no worker of cluster %s has been NotReady for more than %s (--not-ready-for)", s.cl.Name, ShortDuration(s.notReadyFor))
	}
	return nil
}

// serverAddresses returns the name of each server of the cluster's worker roles by its
// address, for instances that are addresses no Node reports.
func (s *stuckRebooter) serverAddresses(ctx context.Context) (map[string]string, error) {
	cloud, err := s.env.Cloud(ctx, s.cl)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(s.cl.Roles)) {
		r := s.cl.Roles[name]
		if r.ControlPlane {
			continue
		}
		list, err := cloud.RoleServers(ctx, r.Prefix)
		if err != nil {
			return nil, fmt.Errorf("map Prometheus instances to servers: %w", err)
		}
		for _, srv := range list {
			if srv.Address != "" {
				out[srv.Address] = srv.Name
			}
		}
	}
	return out, nil
}

// isIP says whether an instance host is an IP address.
func isIP(host string) bool {
	_, err := netip.ParseAddr(host)
	return err == nil
}

// matchInstances maps the hosts of the instances Prometheus reported (labels without
// :port, see instanceHost) to worker nodes. An instance names a node by its name, its
// FQDN (fqdn), one of its InternalIP addresses (status.addresses), or the address of the
// server of its name (servers: server name by address; may be nil). It returns each
// matched node's value (the highest of its instances) and the instances that match no
// worker, sorted.
func matchInstances(reported map[string]float64, workers []*corev1.Node, fqdn func(string) string, servers map[string]string) (map[string]float64, []string) {
	owner := map[string]string{} // instance host -> node
	for _, n := range workers {
		owner[n.Name] = n.Name
		owner[fqdn(n.Name)] = n.Name
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				owner[a.Address] = n.Name
			}
		}
	}
	isWorker := map[string]bool{}
	for _, n := range workers {
		isWorker[n.Name] = true
	}
	for addr, name := range servers {
		if _, taken := owner[addr]; !taken && isWorker[name] {
			owner[addr] = name
		}
	}
	byNode := map[string]float64{}
	var foreign []string
	for inst, v := range reported {
		n, ok := owner[inst]
		if !ok {
			foreign = append(foreign, inst)
			continue
		}
		if old, seen := byNode[n]; !seen || v > old {
			byNode[n] = v
		}
	}
	sort.Strings(foreign)
	return byNode, foreign
}

// instanceHost is the host of an instance label: without its :port ("10.0.0.5:9100",
// "[fd00::5]:9100" and "node-1.example.org:9100" give "10.0.0.5", "fd00::5" and
// "node-1.example.org"); a label without a port is its own host.
func instanceHost(inst string) string {
	if h, _, err := net.SplitHostPort(inst); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(inst, "["), "]")
}

// queryStuck asks the Prometheus at url for query (an instant query) and returns the
// value above zero of each instance it reports, keyed by the instance's host (its
// label without :port). A query Prometheus refuses as bad is bad input; a Prometheus
// that fails or answers no instant vector with instance labels is an error naming url.
func queryStuck(ctx context.Context, log *slog.Logger, url, query string) (map[string]float64, error) {
	client, err := promapi.NewClient(promapi.Config{Address: url})
	if err != nil {
		return nil, fmt.Errorf("prometheus %s: %w", url, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, warnings, err := promv1.NewAPI(client).Query(ctx, query, time.Now())
	if err != nil {
		var perr *promv1.Error
		if errors.As(err, &perr) && perr.Type == promv1.ErrBadData {
			return nil, BadInputf("--query %q: the Prometheus at %s refuses it: %s (expected a PromQL query)", query, url, perr.Msg)
		}
		return nil, fmt.Errorf("query the Prometheus at %s for %q: %w", url, query, err)
	}
	for _, w := range warnings {
		log.Warn("Prometheus warns about the query", "url", url, "warning", w)
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, BadInputf("--query %q: the Prometheus at %s answers a %s, expected an instant vector with an instance label", query, url, v.Type())
	}
	out := map[string]float64{}
	for _, smp := range vec {
		if float64(smp.Value) <= 0 {
			continue
		}
		inst, ok := smp.Metric["instance"]
		if !ok {
			return nil, BadInputf("--query %q: the Prometheus at %s answers %s without an instance label (expected one per node, e.g. sum(...) by (instance))", query, url, smp.Metric)
		}
		host := instanceHost(string(inst))
		out[host] = max(out[host], float64(smp.Value))
	}
	return out, nil
}

// notReadySince returns when the node's Ready condition last turned to something other
// than True, and whether it is not True now. A node without the condition has never
// been Ready: it counts from its creation.
func notReadySince(n *corev1.Node) (time.Time, bool) {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.LastTransitionTime.Time, c.Status != corev1.ConditionTrue
		}
	}
	return n.CreationTimestamp.Time, true
}

func (s *stuckRebooter) confirm(ctx context.Context) (string, error) {
	if err := s.find(ctx); err != nil {
		return "", err
	}
	named := make([]string, len(s.stuck))
	for i, n := range s.stuck {
		named[i] = n + ": " + s.why[n]
	}
	return fmt.Sprintf("Reboot %d stuck worker(s) of cluster %s (%s)?", len(s.stuck), s.cl.Name, strings.Join(named, "; ")), nil
}

func (s *stuckRebooter) plan(ctx context.Context, v *pipeline.Values) ([]pipeline.Step, error) {
	if _, recorded, err := keyRollPlan.Lookup(v); err != nil {
		return nil, err
	} else if !recorded {
		if err := s.find(ctx); err != nil {
			return nil, err
		}
	}
	return s.roll.Plan(ctx, v)
}

// selectStuck keeps the stuck workers found (still nodes of the cluster).
func (s *stuckRebooter) selectStuck(names []string) ([]string, error) {
	var out []string
	for _, n := range names {
		if slices.Contains(s.stuck, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// rebootStep reboots a stuck node: over SSH, proven by a new boot id (falling back to a
// hard reboot), when SSH reaches it; else hard through OpenStack, proven by the Node
// reporting a new boot id and Ready. The Node's boot id before is recorded in scope sc.
// Resumed, a node back on a new boot id and Ready is done; a hard reboot recorded as sent
// and a soft reboot under way are waited for, never sent again because SSH does not answer
// a node that is booting (see hardReboot).
func (s *stuckRebooter) rebootStep(c *clients, sc pipeline.Scope, node string, timeout time.Duration) pipeline.Step {
	key := pipeline.In(sc, keyNodeBootIDBefore)
	return pipeline.Step{
		Name: "reboot",
		Desc: pipeline.Textf("reboot %s (hard through OpenStack if SSH cannot reach it), proven by a new boot id", node),
		Do: func(ctx context.Context, v *pipeline.Values) error {
			old, recorded, err := key.Lookup(v)
			if err != nil {
				return err
			}
			n, err := c.kube.Node(ctx, node)
			if err != nil {
				return err
			}
			if !recorded {
				old = n.Status.NodeInfo.BootID
				if err := key.Set(v, old); err != nil {
					return err
				}
			} else if n.Status.NodeInfo.BootID != old && k8sops.IsReady(n) {
				return nil // rebooted before the run stopped
			}
			hardSent, _, err := pipeline.In(sc, keyNodeHardRebootIssued).Lookup(v)
			if err != nil {
				return err
			}
			if hardSent {
				return hardReboot(ctx, c, sc, v, node, old, timeout)
			}
			host, err := c.target(ctx, node)
			if err != nil {
				return err
			}
			_, softStarted, err := pipeline.In(sc, keyBootIDBefore).Lookup(v)
			if err != nil {
				return err
			}
			if softStarted {
				// The run stopped during the soft reboot: SSH may not answer a node that
				// is booting; rebootNode waits for it (and falls back as it does).
				return rebootNode(ctx, c, sc, v, node, host, rebootOpts{Timeout: timeout, HardFallback: true})
			}
			if _, err = c.ssh.BootID(ctx, host); err == nil {
				return rebootNode(ctx, c, sc, v, node, host, rebootOpts{Timeout: timeout, HardFallback: true})
			}
			c.env.Log.Warn("SSH cannot reach the node; hard rebooting it through OpenStack", "node", node, "err", err)
			return hardReboot(ctx, c, sc, v, node, old, timeout)
		},
	}
}

// hardReboot hard-reboots the node's server through OpenStack and waits until its Node
// reports a boot id other than old and Ready. The reboot is recorded as sent (in scope sc)
// before the request goes out. When it was recorded already (a run stopped during the
// reboot), the node is only waited for; it is sent again only when the node has not come
// back within timeout and the server is ACTIVE or SHUTOFF (no reboot under way: the one
// recorded never reached Nova, or did not bring the node back), which is logged. A dry-run
// sends nothing and waits for nothing.
func hardReboot(ctx context.Context, c *clients, sc pipeline.Scope, v *pipeline.Values, node, old string, timeout time.Duration) error {
	issued := pipeline.In(sc, keyNodeHardRebootIssued)
	sent, _, err := issued.Lookup(v)
	if err != nil {
		return err
	}
	back := func(ctx context.Context) error {
		return c.kube.WaitNode(ctx, node, "back with a new boot id", timeout, func(n *corev1.Node) bool {
			return n != nil && n.Status.NodeInfo.BootID != old && k8sops.IsReady(n)
		})
	}
	if sent {
		if c.env.DryRun {
			c.env.Log.Info("hard reboot sent before the run stopped; the resume would wait for the node, not send it again", "node", node, "timeout", timeout)
			return nil
		}
		c.env.Log.Info("hard reboot sent before the run stopped; waiting for the node", "node", node, "timeout", timeout)
		err := back(ctx)
		if !errors.Is(err, k8sops.ErrTimeout) {
			return err
		}
		srv, serr := c.cloud.ServerByName(ctx, node)
		if serr != nil {
			return fmt.Errorf("hard reboot %s: %w (after: %v)", node, serr, err)
		}
		if srv.Status != "ACTIVE" && srv.Status != "SHUTOFF" {
			return fmt.Errorf("hard reboot %s (server %s): %w", node, srv.Status, err)
		}
		c.env.Log.Warn("node not back within the reboot timeout after the hard reboot sent before the run stopped; hard rebooting it again", "node", node, "server_status", srv.Status, "timeout", timeout)
	}
	srv, err := c.cloud.ServerByName(ctx, node)
	if err != nil {
		return fmt.Errorf("hard reboot %s: %w", node, err)
	}
	if !sent {
		if err := issued.Set(v, true); err != nil {
			return err
		}
	}
	// Recorded also when the request fails: a failure does not prove Nova did not act on
	// it (a lost response, or a refusal of the client's retry of a request Nova handled).
	if err := c.cloud.Reboot(ctx, srv.ID, node, true); err != nil {
		return err
	}
	if c.env.DryRun {
		return nil
	}
	return back(ctx)
}
