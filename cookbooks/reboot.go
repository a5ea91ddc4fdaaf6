package cookbooks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/ssh"
)

// keyBootIDBefore is a node's boot id before the run rebooted it, in the scope of the
// reboot's step set: "<node>/boot-id-before" for a node of a rolling job.
const keyBootIDBefore = pipeline.Key[string]("boot-id-before")

// keyRebootIssued records that the soft reboot was sent, in the same scope: a run killed
// between recording the boot id and sending the reboot must send it on resume, not wait for
// a reboot that never started.
const keyRebootIssued = pipeline.Key[bool]("reboot-issued")

// rebootGrace is how long a resumed reboot that may or may not have been sent waits for the
// host to go down or come back before it sends the reboot (again).
const rebootGrace = 30 * time.Second

// nodeRef is the node a step set acts on: its name and how SSH reaches it. A node known
// when the run is planned has a fixed name (knownNode); a node that an earlier step of the
// run creates is named by a value that step recorded and reached with the host keys it
// pinned (addNode gives its own nodeRef to the sets it uses).
type nodeRef struct {
	// Name returns the node's name.
	Name func(v *pipeline.Values) (string, error)
	// Host returns the SSH target of the node.
	Host func(ctx context.Context, v *pipeline.Values) (string, error)
	// Imaginary, if not nil, reports that the node exists only in a dry-run (a server
	// the dry-run did not create): steps then only say what they would do.
	Imaginary func(v *pipeline.Values) bool
}

// knownNode refers to an existing node by name, reached at its SSH target.
func knownNode(c *clients, node string) nodeRef {
	return nodeRef{
		Name: func(*pipeline.Values) (string, error) { return node, nil },
		Host: func(ctx context.Context, _ *pipeline.Values) (string, error) { return c.target(ctx, node) },
	}
}

// rebootOpts are how a reboot is done.
type rebootOpts struct {
	// Timeout is how long the node may take to come back.
	Timeout time.Duration
	// HardFallback hard-reboots the server through OpenStack when the soft reboot cannot
	// be issued or the node does not come back in time.
	HardFallback bool
}

// reboot is the step set that reboots a node over SSH, proven by a new boot id (the old
// one recorded in scope s before the reboot), falling back to a hard reboot through
// OpenStack if opts say so: one step, "reboot".
func reboot(c *clients, s pipeline.Scope, n nodeRef, opts rebootOpts) []pipeline.Step {
	return []pipeline.Step{{
		Name: "reboot",
		Desc: func(v *pipeline.Values) string {
			name, _ := n.Name(v)
			return fmt.Sprintf("reboot %s, proven by a new boot id", name)
		},
		Do: func(ctx context.Context, v *pipeline.Values) error {
			if n.Imaginary != nil && n.Imaginary(v) {
				c.env.Gate.Would(ctx, "reboot the new node and wait for a new boot id")
				return nil
			}
			node, err := n.Name(v)
			if err != nil {
				return err
			}
			host, err := n.Host(ctx, v)
			if err != nil {
				return err
			}
			return rebootNode(ctx, c, s, v, node, host, opts)
		},
	}}
}

// rebootNode reboots a node over SSH and proves it by a new boot id. If the reboot cannot
// be issued or the node does not come back in time, it falls back (unless told not to) to
// a hard reboot through OpenStack and waits again, as the existing cookbooks do. Safe to
// run again: a node whose boot id already differs from the one recorded in scope s is done;
// a reboot recorded as sent is waited for; one that may not have been sent (the run stopped
// between recording the boot id and recording the reboot) is sent again when the host still
// answers with the old boot id after rebootGrace.
func rebootNode(ctx context.Context, c *clients, s pipeline.Scope, v *pipeline.Values, node, host string, opts rebootOpts) error {
	key, issuedKey := pipeline.In(s, keyBootIDBefore), pipeline.In(s, keyRebootIssued)
	timeout, hardFallback := opts.Timeout, opts.HardFallback
	old, recorded, err := key.Lookup(v)
	if err != nil {
		return err
	}
	issued := false
	if recorded {
		// A run stopped during this reboot: the node may be down, or back already.
		if cur, err := c.ssh.BootID(ctx, host); err == nil && cur != old {
			c.env.Log.Info("node already rebooted", "node", node, "boot_id", cur)
			return nil
		}
		if issued, _, err = issuedKey.Lookup(v); err != nil {
			return err
		}
		if !issued {
			// Give a reboot that may be under way its grace; a host still up on the old
			// boot id after it was never asked to reboot.
			if _, err := c.ssh.WaitRebooted(ctx, host, old, min(rebootGrace, timeout)); err == nil {
				return nil
			}
			if cur, err := c.ssh.BootID(ctx, host); err != nil || cur != old {
				issued = true // down: a reboot is under way
			} else {
				c.env.Log.Info("reboot not sent before the run stopped (node up on its old boot id); sending it", "node", node, "grace", min(rebootGrace, timeout))
			}
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
	if issued {
		// Give a reboot already under way its chance before rebooting again.
		_, err = c.ssh.WaitRebooted(ctx, host, old, timeout)
	} else if err = c.ssh.IssueReboot(ctx, host); err == nil {
		if err := issuedKey.Set(v, true); err != nil {
			return err
		}
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
