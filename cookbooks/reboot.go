package cookbooks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/ssh"
)

// bootIDBefore records a node's boot id before the run rebooted it. Key:
// "<node>/boot-id-before".
func bootIDBefore(node string) pipeline.Key[string] {
	return pipeline.Key[string](node + "/boot-id-before")
}

// rebootStep reboots the node the name function gives (add-k8s-node's new server).
func rebootStep(c *clients, name func(*pipeline.Values) string, timeout time.Duration, hardFallback bool) pipeline.Step {
	return pipeline.Step{
		Name: "reboot",
		Desc: func(v *pipeline.Values) string { return fmt.Sprintf("reboot %s, proven by a new boot id", name(v)) },
		Do: func(ctx context.Context, v *pipeline.Values) error {
			if dryNew(c.env, v) {
				c.env.Gate.Would(ctx, "reboot the new node and wait for a new boot id")
				return nil
			}
			node := name(v)
			host, err := hostOf(ctx, c, v, node)
			if err != nil {
				return err
			}
			return rebootNode(ctx, c, v, node, host, timeout, hardFallback)
		},
	}
}

// hostOf is the SSH target of a node; for a server this run created, its pinned host keys
// are applied (again, after a restart).
func hostOf(ctx context.Context, c *clients, v *pipeline.Values, node string) (string, error) {
	n, ok, err := keyHostname.Lookup(v)
	if err != nil {
		return "", err
	}
	if ok && n == node {
		target := c.cl.FQDN(node)
		if c.cl.SSH.ConnectTo == "address" {
			addr, err := keyAddress.Must(v)
			if err != nil {
				return "", err
			}
			target = addr
		}
		fps, ok, err := keyHostKeys.Lookup(v)
		if err != nil {
			return "", err
		}
		if ok {
			c.ssh.Pin(target, fps)
		}
		return target, nil
	}
	return c.target(ctx, node)
}

// rebootNode reboots a node over SSH and proves it by a new boot id. If the reboot cannot
// be issued or the node does not come back in time, it falls back (unless told not to) to
// a hard reboot through OpenStack and waits again, as the existing cookbooks do. Safe to
// run again: a node whose boot id already differs from the recorded one is done.
func rebootNode(ctx context.Context, c *clients, v *pipeline.Values, node, host string, timeout time.Duration, hardFallback bool) error {
	key := bootIDBefore(node)
	old, recorded, err := key.Lookup(v)
	if err != nil {
		return err
	}
	if recorded {
		// A run stopped during this reboot: the node may be down, or back already.
		if cur, err := c.ssh.BootID(ctx, host); err == nil && cur != old {
			c.env.Log.Info("node already rebooted", "node", node, "boot_id", cur)
			return nil
		}
	} else {
		id, err := c.ssh.BootID(ctx, host)
		if err != nil {
			return fmt.Errorf("reboot %s: %w", node, err)
		}
		if err := key.Set(v, id); err != nil {
			return err
		}
		old = id
	}
	if recorded {
		// Give a reboot already under way its chance before rebooting again.
		_, err = c.ssh.WaitRebooted(ctx, host, old, timeout)
	} else if err = c.ssh.IssueReboot(ctx, host); err == nil {
		_, err = c.ssh.WaitRebooted(ctx, host, old, timeout)
	}
	if err == nil {
		return nil
	}
	if !hardFallback || !(errors.Is(err, ssh.ErrRebootNotIssued) || errors.Is(err, ssh.ErrNotBack)) {
		return fmt.Errorf("reboot %s: %w", node, err)
	}
	c.env.Log.Warn("soft reboot failed; hard rebooting through OpenStack", "node", node, "err", err)
	srv, serr := c.cloud.ServerByName(ctx, node)
	if serr != nil {
		return fmt.Errorf("hard reboot %s: %w (after: %v)", node, serr, err)
	}
	if err := c.cloud.Reboot(ctx, srv.ID, node, true); err != nil {
		return err
	}
	if _, err := c.ssh.WaitRebooted(ctx, host, old, timeout); err != nil {
		return fmt.Errorf("reboot %s: after a hard reboot: %w", node, err)
	}
	return nil
}
