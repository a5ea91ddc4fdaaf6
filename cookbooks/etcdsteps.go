package cookbooks

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/etcdctl"
	"example.com/cookbook/k8sops"
	"example.com/cookbook/ssh"
)

// controlNodes are the cluster's control nodes: the nodes labelled
// node-role.kubernetes.io/control-plane, so that a control node added or replaced by an
// earlier run is used without editing the configuration. The configuration's
// controlNodes, when set, overrides them (in its order), checked against the cluster: a
// name that is no Node of the cluster (a control node replaced since the configuration
// was written) is skipped with a warning, once per run; when none is left the labelled
// nodes are used.
func (c *clients) controlNodes(ctx context.Context) ([]string, error) {
	labelled, err := c.kube.ControlPlaneNodes(ctx)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, n := range c.cl.ControlNodes {
		if !slices.Contains(labelled, n) {
			if _, err := c.kube.Node(ctx, n); apierrors.IsNotFound(err) {
				c.warnControl(n, fmt.Sprintf("clusters.%s.controlNodes: %s is no node of the cluster (replaced since the configuration was written?): skipped", c.cl.Name, n))
				continue
			} else if err != nil {
				return nil, err
			}
		}
		names = append(names, n)
	}
	if len(names) > 0 {
		return names, nil
	}
	if len(c.cl.ControlNodes) > 0 && len(labelled) > 0 {
		c.warnControl("", fmt.Sprintf("no node of clusters.%s.controlNodes is in the cluster: using the nodes labelled %s (%s)", c.cl.Name, k8sops.ControlPlaneLabel, strings.Join(labelled, ", ")))
	}
	if len(labelled) == 0 {
		what := "is empty"
		if len(c.cl.ControlNodes) > 0 {
			what = "names no node of the cluster"
		}
		return nil, fmt.Errorf("cluster %s has no control node: no node is labelled %s and clusters.%s.controlNodes %s", c.cl.Name, k8sops.ControlPlaneLabel, c.cl.Name, what)
	}
	return labelled, nil
}

// warnControl logs a warning about the configured control nodes once per run for each
// key (a node's name, or "" for the fallback to the labelled nodes).
func (c *clients) warnControl(key, msg string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.controlWarned == nil {
		c.controlWarned = map[string]bool{}
	}
	if c.controlWarned[key] {
		return
	}
	c.controlWarned[key] = true
	c.env.Log.Warn(msg)
}

// etcdStatus reads the etcd membership and every member's health with etcdctl on the
// first control node that answers, the nodes in except left out (the node being acted
// on); with an external etcd, on the first of its configured hosts that answers, with
// its configured certificates. It returns the status and the SSH target that answered.
func (c *clients) etcdStatus(ctx context.Context, except ...string) (etcdctl.Status, string, error) {
	if c.readEtcd != nil {
		return c.readEtcd(ctx, except...)
	}
	if x := c.cl.ExternalEtcd(); x != nil {
		st, from, errs := c.askEtcd(ctx, x.Hosts, true)
		if errs != nil {
			return etcdctl.Status{}, "", fmt.Errorf("etcd status from no host of clusters.%s.etcd.external.hosts: %w", c.cl.Name, errs)
		}
		return st, from, nil
	}
	nodes, err := c.controlNodes(ctx)
	if err != nil {
		return etcdctl.Status{}, "", err
	}
	others := slices.DeleteFunc(slices.Clone(nodes), func(n string) bool { return slices.Contains(except, n) })
	if len(others) == 0 {
		// A cluster with one control node: it is the only one to ask.
		others = nodes
	}
	st, from, errs := c.askEtcd(ctx, others, false)
	if errs != nil {
		return etcdctl.Status{}, "", fmt.Errorf("etcd status from no control node: %w", errs)
	}
	return st, from, nil
}

// externalEtcd reports whether the cluster's etcd is external (no member on a control
// node).
func (c *clients) externalEtcd() bool { return c.cl.ExternalEtcd() != nil }

// etcdTLS is how etcdctl on a host (its name, and target, what SSH connects to) reaches
// etcd: kubeadm's local member, or the external host's own with its configured paths.
func (c *clients) etcdTLS(host, target string, external bool) etcdctl.TLS {
	if !external {
		return etcdctl.Stacked
	}
	ca, cert, key := c.cl.EtcdTLSPaths(host)
	return etcdctl.External(target, ca, cert, key)
}

// askEtcd asks etcd on the hosts in order (member list, then endpoint health --cluster)
// and returns what the first that answers said, with its SSH target; else every host's
// error.
func (c *clients) askEtcd(ctx context.Context, hosts []string, external bool) (etcdctl.Status, string, error) {
	var errs []error
	for _, n := range hosts {
		target, err := c.target(ctx, n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		tls := c.etcdTLS(n, target, external)
		res, err := c.ssh.Run(ctx, target, ssh.Command{Argv: tls.MemberListArgv(), ReadOnly: true, Timeout: time.Minute})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n, err))
			continue
		}
		members, err := etcdctl.ParseMemberList([]byte(res.Stdout))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n, err))
			continue
		}
		// endpoint health exits 1 when an endpoint is unhealthy; its JSON says which.
		res, err = c.ssh.Run(ctx, target, ssh.Command{Argv: tls.HealthArgv(), ReadOnly: true, Timeout: time.Minute})
		var exit *ssh.ExitError
		if err != nil && !(errors.As(err, &exit) && exit.Status == 1 && strings.HasPrefix(strings.TrimSpace(res.Stdout), "[")) {
			errs = append(errs, fmt.Errorf("%s: %w", n, err))
			continue
		}
		health, err := etcdctl.ParseHealth([]byte(res.Stdout))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n, err))
			continue
		}
		return etcdctl.Status{Members: members, Health: health}, target, nil
	}
	if len(errs) == 0 {
		return etcdctl.Status{}, "", errors.New("no host to ask")
	}
	return etcdctl.Status{}, "", errors.Join(errs...)
}

// etcdCheck is what checkEtcd expects of the etcd cluster.
type etcdCheck struct {
	// Node is the control node being acted on (nil: none): etcd is asked on another one.
	Node func(*pipeline.Values) (string, error)
	// Member: the node must be a member (after adding it). Gone: it must not be (after
	// removing it). Unhealthy: its member may be unhealthy (before removing a dead node).
	Member, Gone, Unhealthy bool
	// Wait is how long the members may take to be all started and healthy (after a
	// change); zero checks once.
	Wait time.Duration
}

// checkEtcd is the step, named name, that reads etcd with etcdctl over SSH on a control
// node (not the one acted on) and fails unless every member is started and healthy and
// the node's membership is as chk says. It only reads, so it runs in dry-run too. Other
// control-node cookbooks (upgrades, replacements) put it before and after each control
// node they change.
func checkEtcd(c *clients, name string, chk etcdCheck) pipeline.Step {
	desc := "check that every etcd member is started and healthy"
	switch {
	case c.externalEtcd():
		// A control node is no member of an external etcd: only its health is checked.
		chk.Member, chk.Gone, chk.Unhealthy = false, false, false
		desc = "check that every member of the external etcd is started and healthy"
	case chk.Member:
		desc += " and the node is a member"
	case chk.Gone:
		desc += " and the removed node is no member"
	case chk.Unhealthy:
		desc = "check that every etcd member but the node's is started and healthy"
	}
	return pipeline.Step{Name: name, Desc: pipeline.Text(desc), Do: func(ctx context.Context, v *pipeline.Values) error {
		node := ""
		if chk.Node != nil {
			n, err := chk.Node(v)
			if err != nil {
				return err
			}
			node = n
		}
		if c.env.DryRun {
			// A rehearsal reads etcd once; the membership a skipped write would have
			// changed (a join, a removal) is not waited for.
			chk.Member, chk.Gone, chk.Wait = false, false, 0
		}
		deadline := time.Now().Add(chk.Wait)
		for {
			err := etcdVerdict(ctx, c, node, chk)
			if err == nil || !time.Now().Before(deadline) {
				return err
			}
			c.env.Log.Info("waiting for etcd", "why", err.Error())
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(2 * time.Second):
			}
		}
	}}
}

// etcdVerdict is one check of checkEtcd.
func etcdVerdict(ctx context.Context, c *clients, node string, chk etcdCheck) error {
	st, from, err := c.etcdStatus(ctx, node)
	if err != nil {
		return err
	}
	_, isMember := st.Member(node)
	switch {
	case chk.Member && !isMember:
		return fmt.Errorf("etcd (asked on %s): %s is not a member (members: %s)", from, node, strings.Join(st.Names(), ", "))
	case chk.Gone && isMember:
		return fmt.Errorf("etcd (asked on %s): %s is still a member", from, node)
	}
	var problems []string
	for _, p := range st.Problems() {
		if chk.Unhealthy && node != "" && strings.HasPrefix(p, node+" (") {
			c.env.Log.Warn("the etcd member of the node is not healthy", "node", node, "member", p)
			continue
		}
		problems = append(problems, p)
	}
	if len(problems) > 0 {
		return fmt.Errorf("etcd (asked on %s): not every member is started and healthy: %s", from, strings.Join(problems, "; "))
	}
	voting, healthy := st.Healthy("")
	c.env.Log.Info("etcd healthy", "members", len(st.Members), "healthy", healthy, "voting", voting, "asked", from)
	return nil
}

// removeEtcdMember is the step that removes a removed control node's etcd member with
// etcdctl member remove on another control node: kubeadm reset, run after the Node is
// deleted, cannot read the node's configuration and leaves the member in (its etcd
// stopped), and a dead host runs no reset at all; nothing to do when it is no member,
// nor with an external etcd (a control node is none of its members, and its membership
// is not the cookbooks' to change).
func removeEtcdMember(c *clients, node string) pipeline.Step {
	desc := pipeline.Textf("remove the etcd member of %s if it is still one", node)
	if c.externalEtcd() {
		desc = pipeline.Textf("remove no etcd member: etcd is external, %s has no member", node)
	}
	return pipeline.Step{Name: "remove-etcd-member", Desc: desc, Do: func(ctx context.Context, v *pipeline.Values) error {
		if c.externalEtcd() {
			return pipeline.Skip("etcd is external: %s has no member", node)
		}
		st, from, err := c.etcdStatus(ctx, node)
		if err != nil {
			return err
		}
		m, ok := st.Member(node)
		if !ok {
			return pipeline.Skip("%s is no etcd member", node)
		}
		if err := st.CheckRemove(node); err != nil {
			return err
		}
		if _, err := c.ssh.Run(ctx, from, ssh.Command{Argv: etcdctl.RemoveArgv(m.ID), Timeout: time.Minute}); err != nil {
			return fmt.Errorf("remove etcd member %s of %s: %w", etcdctl.HexID(m.ID), node, err)
		}
		c.env.Log.Info("removed the etcd member", "node", node, "member", etcdctl.HexID(m.ID), "asked", from)
		return nil
	}}
}

// etcdUnhealthyRefusal is bad input unless every etcd member is started and healthy
// (asked on any control node): why says what is refused ("a control node is added").
func etcdUnhealthyRefusal(ctx context.Context, c *clients, why string) error {
	st, from, err := c.etcdStatus(ctx)
	if err != nil {
		return err
	}
	if p := st.Problems(); len(p) > 0 {
		return BadInputf("etcd (asked on %s): not every member is started and healthy: %s: refused (%s only while every etcd member is started and healthy)", from, strings.Join(p, "; "), why)
	}
	return nil
}

// etcdRefusal is bad input when taking a control node away would leave etcd without a
// healthy quorum: remove says whether it is removed (else stopped, as in a reboot). The
// refusal holds with --force-removal too. With an external etcd a control node is no
// member: no quorum is at stake, but a removal is still refused unless every member is
// started and healthy.
func etcdRefusal(ctx context.Context, c *clients, node string, remove bool) error {
	if c.externalEtcd() {
		if remove {
			return etcdUnhealthyRefusal(ctx, c, "a control node is removed")
		}
		return nil
	}
	st, _, err := c.etcdStatus(ctx, node)
	if err != nil {
		return err
	}
	if remove {
		err = st.CheckRemove(node)
	} else if voting, _ := st.Healthy(""); voting == 1 && len(st.Problems()) == 0 {
		// The only member: nothing keeps a quorum while it is down, whatever is done.
		c.env.Log.Warn("the node is the cluster's only etcd member: etcd and the API are down while it is", "node", node)
	} else {
		err = st.CheckStop(node)
	}
	if err != nil {
		return BadInputf("%v: refused (etcd would lose its quorum; --force-removal does not override this)", err)
	}
	return nil
}
