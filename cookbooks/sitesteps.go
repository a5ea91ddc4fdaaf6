package cookbooks

import (
	"context"
	"fmt"
	"sort"

	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/hooks"
	"example.com/cookbook/silences"
)

// keySilence is the id of the silence of a node's alerts, in the node's scope:
// "<node>/silence-id". A resumed run passes it back, so no second silence is made.
const keySilence = pipeline.Key[string]("silence-id")

// silence is the step that silences the alerts of a node the run takes down on purpose
// (reason says why: "reboot", "removal"), its id recorded in scope s; its undo (an
// abandoned run) expires it. A cluster without an alertmanager has no such step. A
// failing Alertmanager is one warning per run (silences.Silencer) and the step goes on.
func silence(c *clients, s pipeline.Scope, node, role, reason string) []pipeline.Step {
	if c.silencer == nil {
		return nil
	}
	key := pipeline.In(s, keySilence)
	return []pipeline.Step{{
		Name: "silence",
		Desc: pipeline.Textf("silence the alerts of %s", node),
		Do: func(ctx context.Context, v *pipeline.Values) error {
			recorded, _, err := key.Lookup(v)
			if err != nil {
				return err
			}
			n := silences.Node{Hostname: node, FQDN: c.cl.FQDN(node), Cluster: c.cl.Name, Role: role}
			id := c.silencer.SilenceNode(ctx, v.RunID(), n, reason, recorded)
			if id == "" || id == recorded {
				return nil
			}
			return key.Set(v, id)
		},
		Undo: func(ctx context.Context, v *pipeline.Values) error {
			expire(ctx, c, key, v)
			return nil
		},
	}}
}

// unsilence is the step that expires the silence that silence recorded in scope s, once
// the node is back and healthy (or gone); nil without an alertmanager.
func unsilence(c *clients, s pipeline.Scope, node string) []pipeline.Step {
	if c.silencer == nil {
		return nil
	}
	key := pipeline.In(s, keySilence)
	return []pipeline.Step{{
		Name: "unsilence",
		Desc: pipeline.Textf("expire the silence of %s", node),
		Do: func(ctx context.Context, v *pipeline.Values) error {
			expire(ctx, c, key, v)
			return nil
		},
	}}
}

// expire expires the recorded silence; a failure is the silencer's warning.
func expire(ctx context.Context, c *clients, key pipeline.Key[string], v *pipeline.Values) {
	if id, ok := key.Get(v); ok && id != "" {
		c.silencer.Expire(ctx, id)
	}
}

// hookSteps are the steps of the hooks a node of role runs at point (the cluster's, then
// the role's), one each: hook-<point>-<n>. node gives the node's values when a step runs.
// No hook configured, no step.
func hookSteps(c *clients, role, point string, node func(*pipeline.Values) (hooks.Node, error)) []pipeline.Step {
	hs := c.cl.HooksAt(role, point)
	if len(hs) == 0 {
		return nil
	}
	return c.hooks.Steps(point, hs, node)
}

// hookNode is a node's values for the placeholders of its hooks.
func (c *clients) hookNode(name, role, serverID, address string) hooks.Node {
	return hooks.Node{Hostname: name, FQDN: c.cl.FQDN(name), Role: role, Cluster: c.cl.Name, ServerID: serverID, Address: address}
}

// knownHookSteps are hookSteps for an existing node: its server (id and address) is
// looked up in the cloud when one of its hook steps runs; the description before that
// names the node without them.
func knownHookSteps(c *clients, name, role, point string) []pipeline.Step {
	n := c.hookNode(name, role, "", "")
	steps := hookSteps(c, role, point, func(*pipeline.Values) (hooks.Node, error) { return n, nil })
	for i := range steps {
		do := steps[i].Do
		steps[i].Do = func(ctx context.Context, v *pipeline.Values) error {
			if n.ServerID == "" {
				srv, err := c.cloud.ServerByName(ctx, name)
				if err != nil {
					return fmt.Errorf("look up the server of %s for its hooks: %w", name, err)
				}
				n.ServerID, n.Address = srv.ID, srv.Address
			}
			return do(ctx, v)
		}
	}
	return steps
}

// keyClusterSilence is the id of a run's whole-cluster silence (--silence-cluster). A
// resumed run passes it back, so no second silence is made.
const keyClusterSilence = pipeline.Key[string]("cluster-silence-id")

// withClusterSilence wraps a run's steps in a whole-cluster silence: silence-cluster
// after the first step (the audit line that says the run started), unsilence-cluster
// before the last (the audit line that says it finished). The silence matches every node
// of the cluster's roles for the cluster's clusterDuration (3 h by default, as the
// Toolforge upgrade runbook silences); its id is recorded in the run, reused on resume
// and expired by unsilence-cluster or by the undo of an abandoned run. reason starts the
// silence's comment. A failing Alertmanager is the silencer's one warning.
func withClusterSilence(c *clients, steps []pipeline.Step, reason string) []pipeline.Step {
	if c.silencer == nil || len(steps) < 2 {
		return steps
	}
	var prefixes []string
	for _, r := range c.cl.Roles {
		if r != nil && r.Prefix != "" {
			prefixes = append(prefixes, r.Prefix)
		}
	}
	sort.Strings(prefixes)
	silence := pipeline.Step{
		Name: "silence-cluster",
		Desc: pipeline.Textf("silence the alerts of every node of cluster %s", c.cl.Name),
		Do: func(ctx context.Context, v *pipeline.Values) error {
			recorded, _, err := keyClusterSilence.Lookup(v)
			if err != nil {
				return err
			}
			id := c.silencer.SilenceCluster(ctx, v.RunID(), c.cl.Name, prefixes, reason, recorded)
			if id == "" || id == recorded {
				return nil
			}
			return keyClusterSilence.Set(v, id)
		},
		Undo: func(ctx context.Context, v *pipeline.Values) error {
			expire(ctx, c, keyClusterSilence, v)
			return nil
		},
	}
	unsilence := pipeline.Step{
		Name: "unsilence-cluster",
		Desc: pipeline.Textf("expire the silence of cluster %s", c.cl.Name),
		Do: func(ctx context.Context, v *pipeline.Values) error {
			expire(ctx, c, keyClusterSilence, v)
			return nil
		},
	}
	last := len(steps) - 1
	return pipeline.Steps(steps[:1], pipeline.One(silence), steps[1:last], pipeline.One(unsilence), steps[last:])
}
