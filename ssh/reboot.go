package ssh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"k8s.io/apimachinery/pkg/util/wait"
)

// BootID reads the host's boot id (/proc/sys/kernel/random/boot_id).
func (c *Client) BootID(ctx context.Context, host string) (string, error) {
	res, err := c.Run(ctx, host, Command{Argv: []string{"cat", "/proc/sys/kernel/random/boot_id"}, ReadOnly: true, Timeout: 30 * time.Second})
	if err != nil {
		return "", fmt.Errorf("read boot id of %s: %w", host, err)
	}
	id := strings.TrimSpace(res.Stdout)
	if id == "" {
		return "", fmt.Errorf("read boot id of %s: empty", host)
	}
	return id, nil
}

// ErrRebootNotIssued means the soft reboot could not be started: the caller may fall
// back to a hard reboot through OpenStack.
var ErrRebootNotIssued = errors.New("reboot could not be issued")

// IssueReboot asks the host to reboot (systemctl reboot). The session dropping is the
// expected answer.
func (c *Client) IssueReboot(ctx context.Context, host string) error {
	timeout := c.RebootTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	_, err := c.Run(ctx, host, Command{Argv: []string{"systemctl", "reboot"}, Timeout: timeout})
	c.dropHost(host)
	if err == nil || dropped(err) {
		return nil
	}
	return fmt.Errorf("%w on %s: %v", ErrRebootNotIssued, host, err)
}

// dropped reports whether err is the connection going away under the command: the
// session closed without an exit status, or the connection ended (EOF) or was reset.
func dropped(err error) bool {
	var missing *ssh.ExitMissingError
	return errors.As(err, &missing) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

func (c *Client) dropHost(host string) {
	c.mu.Lock()
	cl, ok := c.conns[host]
	delete(c.conns, host)
	c.mu.Unlock()
	if ok {
		cl.Close()
	}
}

// ErrNotBack means the host did not come back with a new boot id in time.
var ErrNotBack = errors.New("host did not come back with a new boot id")

// WaitRebooted waits until the host answers SSH with a boot id other than oldBootID.
func (c *Client) WaitRebooted(ctx context.Context, host, oldBootID string, timeout time.Duration) (string, error) {
	if c.gate.Enabled() {
		return oldBootID, nil
	}
	var id string
	var last error
	start, reported := time.Now(), time.Now()
	err := wait.PollUntilContextTimeout(ctx, time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		if time.Since(reported) >= c.reportEvery() {
			reported = time.Now()
			c.log.Info("waiting for "+host+" to come back with a new boot id", "last", last, "waited", time.Since(start).Round(time.Second))
		}
		c.dropHost(host)
		cur, err := c.BootID(ctx, host)
		switch {
		case err != nil:
			last = err
		case cur == oldBootID:
			last = fmt.Errorf("boot id still %s", cur)
		default:
			id = cur
			return true, nil
		}
		return false, nil // down, or not rebooted yet: look again
	})
	if err != nil {
		return "", fmt.Errorf("%w: %s after %s (last: %v)", ErrNotBack, host, timeout, last)
	}
	c.log.Info("host is back with a new boot id", "host", host, "boot_id", id)
	return id, nil
}

// Reboot reboots the host and proves it: the boot id is read first, the reboot issued,
// and the host must answer with another boot id within timeout. A returned
// ErrRebootNotIssued or ErrNotBack lets the caller fall back to a hard reboot.
func (c *Client) Reboot(ctx context.Context, host string, timeout time.Duration) (string, error) {
	old, err := c.BootID(ctx, host)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrRebootNotIssued, err)
	}
	if err := c.IssueReboot(ctx, host); err != nil {
		return "", err
	}
	return c.WaitRebooted(ctx, host, old, timeout)
}
