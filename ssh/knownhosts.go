package ssh

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"example.com/cookbook/atomicfile"
)

// learn records a host key verified by a pin in the Learned known_hosts file, in place
// of any key recorded for that host before (a server replaced under the same name or
// address has a new key; the old one must not stay trusted).
func (c *Client) learn(hostport string, key ssh.PublicKey) {
	if c.Learned == "" || c.gate.Enabled() {
		return
	}
	host := knownhosts.Normalize(hostport)
	line := knownhosts.Line([]string{host}, key)
	changed, err := c.rewriteLearned(func(lines []string) []string {
		if slices.Contains(lines, line) {
			return lines
		}
		return append(withoutHosts(lines, host), line)
	})
	if err != nil {
		c.log.Warn("cannot record the host key", "file", c.Learned, "err", err)
		return
	}
	if changed {
		c.log.Info("recorded the host key verified from the console", "host", hostport, "file", c.Learned)
	}
}

// Forget removes what the Learned known_hosts file says about hosts (names or
// addresses, on the client's port): a deleted server's key must not be trusted for
// whatever gets its name or address next. The operator's own known_hosts files are
// never changed. A host that is not there is not an error.
func (c *Client) Forget(ctx context.Context, hosts ...string) error {
	if c.Learned == "" {
		return nil
	}
	var patterns []string
	for _, h := range hosts {
		if h != "" {
			patterns = append(patterns, knownhosts.Normalize(net.JoinHostPort(h, strconv.Itoa(c.port()))))
		}
	}
	if len(patterns) == 0 {
		return nil
	}
	return c.gate.Write(ctx, fmt.Sprintf("forget the host keys of %s in %s", strings.Join(patterns, ", "), c.Learned), func(ctx context.Context) error {
		_, err := c.rewriteLearned(func(lines []string) []string { return withoutHosts(lines, patterns...) })
		if err != nil {
			return fmt.Errorf("forget host keys of %s: %w", strings.Join(patterns, ", "), err)
		}
		return nil
	}, nil)
}

// withoutHosts returns lines, less those whose host field names one of hosts.
func withoutHosts(lines []string, hosts ...string) []string {
	var out []string
	for _, l := range lines {
		fields := strings.Fields(l)
		if len(fields) > 0 && !strings.HasPrefix(fields[0], "#") && !strings.HasPrefix(fields[0], "@") {
			match := false
			for _, h := range strings.Split(fields[0], ",") {
				if slices.Contains(hosts, h) {
					match = true
				}
			}
			if match {
				continue
			}
		}
		out = append(out, l)
	}
	return out
}

// rewriteLearned applies edit to the lines of the Learned file under an exclusive lock
// (several runs, on several clusters, share the file) and replaces the file atomically
// when they changed.
func (c *Client) rewriteLearned(edit func([]string) []string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	lock, err := os.OpenFile(c.Learned+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return false, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return false, fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	data, err := os.ReadFile(c.Learned)
	if err != nil && !os.IsNotExist(err) {
		return false, err
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("read %s: %w", c.Learned, err)
	}
	edited := edit(slices.Clone(lines))
	if slices.Equal(edited, lines) {
		return false, nil
	}
	var buf bytes.Buffer
	for _, l := range edited {
		buf.WriteString(l + "\n")
	}
	if err := atomicfile.WriteFile(c.Learned, buf.Bytes(), 0o600); err != nil {
		return false, err
	}
	return true, nil
}
