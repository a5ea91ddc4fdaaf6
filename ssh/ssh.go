// Package ssh runs commands on the cluster's hosts over SSH (golang.org/x/crypto/ssh):
// agent and key file authentication, host keys verified against known_hosts or pinned
// from a new server's console, jump hosts, per-command timeouts, read-only commands that
// also run in dry-run, and reboots proven by a new boot id.
package ssh

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"example.com/cookbook/dryrun"
)

// Options are the SSH settings of one cluster.
type Options struct {
	// User is the remote user.
	User string
	// Port is the hosts' SSH port; 22 if zero.
	Port int
	// Sudo runs every command through sudo.
	Sudo bool
	// JumpHost is a bastion, as [user@]host[:port], used like ssh's ProxyJump.
	JumpHost string
	// KnownHosts are known_hosts files; empty means ~/.ssh/known_hosts.
	KnownHosts []string
	// IdentityFiles are private key files used besides the ssh-agent.
	IdentityFiles []string
	// InsecureIgnoreHostKey turns host key verification off (logged loudly).
	InsecureIgnoreHostKey bool
	// Gate is where commands that change something pass; nil runs them.
	Gate *dryrun.Gate
	// Log receives connection warnings and the commands' output (debug); nil discards.
	Log *slog.Logger
}

// Client runs commands on hosts. Connections are kept per host until Close.
type Client struct {
	cfg  Options
	gate *dryrun.Gate
	log  *slog.Logger

	// DialTimeout bounds a connection attempt; 10s if zero.
	DialTimeout time.Duration
	// KeepAlive is the interval of keepalive requests on open connections; 5s if zero.
	KeepAlive time.Duration
	// ReportEvery is how often a long wait (a host coming back from a reboot) logs what it
	// waits for and since when; 30s if zero.
	ReportEvery time.Duration
	// RebootTimeout bounds issuing a reboot; 30s if zero.
	RebootTimeout time.Duration
	// Learned is a known_hosts file of keys learned through pins (a new server's
	// console): they are written there after a verified connection, and trusted on
	// later runs. Empty learns nothing.
	Learned string

	mu    sync.Mutex
	pins  map[string][]string
	conns map[string]*ssh.Client
	jump  *ssh.Client
	auth  []ssh.AuthMethod
	agent net.Conn
}

// New returns a client for the cluster's SSH settings.
func New(cfg Options) (*Client, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{cfg: cfg, gate: cfg.Gate, log: log, pins: map[string][]string{}, conns: map[string]*ssh.Client{}}
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
		if conn, err := net.Dial("unix", sock); err == nil {
			c.agent = conn
			c.auth = append(c.auth, ssh.PublicKeysCallback(agent.NewClient(conn).Signers))
		} else {
			log.Warn("ssh-agent not reachable", "socket", sock, "err", err)
		}
	}
	var signers []ssh.Signer
	for _, f := range cfg.IdentityFiles {
		data, err := os.ReadFile(expandHome(f))
		if err != nil {
			return nil, fmt.Errorf("ssh identity file: %w", err)
		}
		s, err := ssh.ParsePrivateKey(data)
		if err != nil {
			// Never echo the key: name the file only.
			return nil, fmt.Errorf("ssh identity file %s: cannot parse the private key (passphrase-protected keys must be in the agent)", f)
		}
		signers = append(signers, s)
	}
	if len(signers) > 0 {
		c.auth = append(c.auth, ssh.PublicKeys(signers...))
	}
	if len(c.auth) == 0 {
		return nil, errors.New("ssh: no ssh-agent (SSH_AUTH_SOCK) and no identityFiles in the configuration")
	}
	if cfg.InsecureIgnoreHostKey {
		log.Warn("SSH HOST KEY VERIFICATION IS OFF for this cluster (ssh.insecureIgnoreHostKey): connections can be intercepted")
	}
	return c, nil
}

func expandHome(p string) string {
	if strings.HasPrefix(p, "~/") {
		if h, err := os.UserHomeDir(); err == nil {
			return filepath.Join(h, p[2:])
		}
	}
	return p
}

// Pin makes host accept only keys with these fingerprints ("SHA256:..."), e.g. those a
// new server printed on its console. Pins are plain data the caller may record.
func (c *Client) Pin(host string, fingerprints []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pins[host] = append([]string(nil), fingerprints...)
}

// HostKeyError is a host key that does not match what was expected.
type HostKeyError struct {
	Host, Got string
	Want      []string
}

func (e *HostKeyError) Error() string {
	return fmt.Sprintf("host key of %s is %s, expected %s: refusing to connect (the host may have been replaced or the connection intercepted)", e.Host, e.Got, strings.Join(e.Want, " or "))
}

func (c *Client) hostKeyCallback(host string) (ssh.HostKeyCallback, error) {
	c.mu.Lock()
	pins := c.pins[host]
	c.mu.Unlock()
	if len(pins) > 0 {
		return func(hostname string, _ net.Addr, key ssh.PublicKey) error {
			got := ssh.FingerprintSHA256(key)
			for _, p := range pins {
				if p == got {
					c.learn(hostname, key)
					return nil
				}
			}
			return &HostKeyError{Host: host, Got: got, Want: pins}
		}, nil
	}
	if c.cfg.InsecureIgnoreHostKey {
		return func(hostname string, _ net.Addr, key ssh.PublicKey) error {
			c.log.Warn("accepting an unverified host key (ssh.insecureIgnoreHostKey)", "host", hostname, "key", ssh.FingerprintSHA256(key))
			return nil
		}, nil
	}
	files := c.cfg.KnownHosts
	if len(files) == 0 {
		files = []string{"~/.ssh/known_hosts"}
	}
	if c.Learned != "" {
		files = append(files, c.Learned)
	}
	var existing []string
	for _, f := range files {
		f = expandHome(f)
		if _, err := os.Stat(f); err == nil {
			existing = append(existing, f)
		}
	}
	if len(existing) == 0 {
		return nil, fmt.Errorf("ssh: no known_hosts file (%s) to verify %s against", strings.Join(files, ", "), host)
	}
	cb, err := knownhosts.New(existing...)
	if err != nil {
		return nil, fmt.Errorf("ssh: known_hosts: %w", err)
	}
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		err := cb(hostname, remote, key)
		var ke *knownhosts.KeyError
		if errors.As(err, &ke) {
			if len(ke.Want) == 0 {
				return fmt.Errorf("host %s is not in known_hosts (%s): add its key, or let the cookbook pin it from the server's console", hostname, strings.Join(existing, ", "))
			}
			var want []string
			for _, w := range ke.Want {
				want = append(want, ssh.FingerprintSHA256(w.Key))
			}
			return &HostKeyError{Host: hostname, Got: ssh.FingerprintSHA256(key), Want: want}
		}
		return err
	}, nil
}

func (c *Client) port() int {
	if c.cfg.Port != 0 {
		return c.cfg.Port
	}
	return 22
}

func (c *Client) reportEvery() time.Duration {
	if c.ReportEvery > 0 {
		return c.ReportEvery
	}
	return 30 * time.Second
}

func (c *Client) dialTimeout() time.Duration {
	if c.DialTimeout > 0 {
		return c.DialTimeout
	}
	return 10 * time.Second
}

// conn returns the cached connection to host or dials one.
func (c *Client) conn(ctx context.Context, host string) (*ssh.Client, error) {
	c.mu.Lock()
	if cl, ok := c.conns[host]; ok {
		c.mu.Unlock()
		return cl, nil
	}
	c.mu.Unlock()
	cb, err := c.hostKeyCallback(host)
	if err != nil {
		return nil, err
	}
	cfg := &ssh.ClientConfig{User: c.cfg.User, Auth: c.auth, HostKeyCallback: cb, Timeout: c.dialTimeout()}
	addr := net.JoinHostPort(host, strconv.Itoa(c.port()))
	var raw net.Conn
	if c.cfg.JumpHost != "" {
		// A bastion connection that died since it was made is dropped and dialled again once.
		for try := 0; ; try++ {
			jump, err := c.jumpClient(ctx)
			if err != nil {
				return nil, err
			}
			if raw, err = jump.DialContext(ctx, "tcp", addr); err == nil {
				break
			}
			if try > 0 || ctx.Err() != nil {
				return nil, fmt.Errorf("ssh %s via %s: %w", host, c.cfg.JumpHost, err)
			}
			c.dropJump(jump)
		}
	} else {
		d := net.Dialer{Timeout: c.dialTimeout()}
		raw, err = d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("ssh %s: %w", host, err)
		}
	}
	cl, err := c.handshake(ctx, raw, addr, cfg)
	if err != nil {
		return nil, fmt.Errorf("ssh %s: %w", host, err)
	}
	c.mu.Lock()
	if other, ok := c.conns[host]; ok {
		// Another caller dialed host meanwhile: one connection per host, or the
		// other would be left open, out of Close's reach.
		c.mu.Unlock()
		cl.Close()
		return other, nil
	}
	c.conns[host] = cl
	c.mu.Unlock()
	go c.keepAlive(host, cl)
	return cl, nil
}

// keepAlive notices a dead connection within seconds and drops it from the cache.
func (c *Client) keepAlive(host string, cl *ssh.Client) {
	every := c.KeepAlive
	if every == 0 {
		every = 5 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	done := make(chan error, 1)
	go func() { done <- cl.Wait() }()
	for {
		select {
		case <-done:
			c.drop(host, cl)
			return
		case <-t.C:
			res := make(chan error, 1)
			go func() { _, _, err := cl.SendRequest("keepalive@openssh.com", true, nil); res <- err }()
			select {
			case err := <-res:
				if err != nil {
					c.drop(host, cl)
					return
				}
			case <-time.After(every):
				c.log.Warn("ssh connection stopped answering; dropping it", "host", host)
				c.drop(host, cl)
				return
			}
		}
	}
}

func (c *Client) drop(host string, cl *ssh.Client) {
	c.mu.Lock()
	if c.conns[host] == cl {
		delete(c.conns, host)
	}
	c.mu.Unlock()
	cl.Close()
}

func (c *Client) jumpClient(ctx context.Context) (*ssh.Client, error) {
	c.mu.Lock()
	if c.jump != nil {
		defer c.mu.Unlock()
		return c.jump, nil
	}
	c.mu.Unlock()
	user, hostport := c.cfg.User, c.cfg.JumpHost
	if u, h, ok := strings.Cut(hostport, "@"); ok {
		user, hostport = u, h
	}
	host, port := hostport, "22"
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		host, port = h, p
	}
	cb, err := c.hostKeyCallback(host)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: c.dialTimeout()}
	addr := net.JoinHostPort(host, port)
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ssh jump host %s: %w", c.cfg.JumpHost, err)
	}
	jump, err := c.handshake(ctx, raw, addr, &ssh.ClientConfig{User: user, Auth: c.auth, HostKeyCallback: cb, Timeout: c.dialTimeout()})
	if err != nil {
		return nil, fmt.Errorf("ssh jump host %s: %w", c.cfg.JumpHost, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.jump != nil { // another goroutine connected meanwhile
		jump.Close()
		return c.jump, nil
	}
	c.jump = jump
	return c.jump, nil
}

func (c *Client) dropJump(jump *ssh.Client) {
	c.mu.Lock()
	if c.jump == jump {
		c.jump = nil
	}
	c.mu.Unlock()
	jump.Close()
}

// handshake runs the SSH handshake on raw, bounded by the dial timeout and ctx: a host
// that accepts TCP and then says nothing, as one going down for a reboot may, would
// otherwise hold it forever. raw is closed on failure.
func (c *Client) handshake(ctx context.Context, raw net.Conn, addr string, cfg *ssh.ClientConfig) (*ssh.Client, error) {
	hctx, cancel := context.WithTimeout(ctx, c.dialTimeout())
	defer cancel()
	// Closing raw is what interrupts a handshake on any net.Conn, also a channel
	// through a jump host, which has no deadlines.
	stop := context.AfterFunc(hctx, func() { raw.Close() })
	cc, chans, reqs, err := ssh.NewClientConn(raw, addr, cfg)
	if !stop() {
		if err == nil {
			cc.Close()
		}
		return nil, fmt.Errorf("handshake: %w", hctx.Err())
	}
	if err != nil {
		raw.Close()
		return nil, err
	}
	return ssh.NewClient(cc, chans, reqs), nil
}

// Close closes every connection. Call it at the end of a step.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for h, cl := range c.conns {
		errs = append(errs, cl.Close())
		delete(c.conns, h)
	}
	if c.jump != nil {
		errs = append(errs, c.jump.Close())
		c.jump = nil
	}
	return errors.Join(errs...)
}

// Shutdown closes the connections and the agent connection.
func (c *Client) Shutdown() error {
	err := c.Close()
	if c.agent != nil {
		err = errors.Join(err, c.agent.Close())
	}
	return err
}

// Command is a command to run on a host.
type Command struct {
	// Argv is the command and its arguments; they are quoted for the remote shell.
	Argv []string
	// ReadOnly commands change nothing on the host: they also run in dry-run.
	ReadOnly bool
	// Timeout bounds the command; 5 minutes if zero.
	Timeout time.Duration
	// Secret commands (a kubeadm join with its token) are logged as LogAs, and their
	// output is not streamed to the log.
	Secret bool
	LogAs  string
}

// Result is what a command produced.
type Result struct {
	Stdout, Stderr string
	ExitStatus     int
}

// ExitError is a command that exited non-zero.
type ExitError struct {
	Host, Command string
	Status        int
	StderrTail    string
}

// ExitStatus is the command's exit status.
func (e *ExitError) ExitStatus() int { return e.Status }

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("%s: `%s` exited with status %d", e.Host, e.Command, e.Status)
	if e.StderrTail != "" {
		msg += ": " + e.StderrTail
	}
	return msg
}

// Run runs the command on host. Writes (commands not ReadOnly) go through the dry-run
// gate: in dry-run they are logged and not run, and an empty Result is returned.
func (c *Client) Run(ctx context.Context, host string, cmd Command) (Result, error) {
	line := Quote(cmd.Argv)
	if c.cfg.Sudo {
		line = "sudo -n -- " + line
	}
	shown := line
	if cmd.Secret {
		shown = cmd.LogAs
		if shown == "" {
			shown = cmd.Argv[0] + " [arguments hidden]"
		}
	}
	if cmd.ReadOnly {
		return c.run(ctx, host, line, shown, cmd.Timeout, cmd.Secret)
	}
	var res Result
	err := c.gate.Write(ctx, fmt.Sprintf("run on %s: %s", host, shown), func(ctx context.Context) error {
		var err error
		res, err = c.run(ctx, host, line, shown, cmd.Timeout, cmd.Secret)
		return err
	}, nil, "host", host)
	return res, err
}

func (c *Client) run(ctx context.Context, host, line, shown string, timeout time.Duration, secret bool) (Result, error) {
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cl, err := c.conn(ctx, host)
	if err != nil {
		return Result{}, err
	}
	sess, err := cl.NewSession()
	if err != nil {
		// A connection that died since it was cached: drop it and try once more.
		c.drop(host, cl)
		if cl, err = c.conn(ctx, host); err != nil {
			return Result{}, err
		}
		if sess, err = cl.NewSession(); err != nil {
			return Result{}, fmt.Errorf("ssh %s: new session: %w", host, err)
		}
	}
	defer sess.Close()
	var stdout, stderr bytes.Buffer
	outR, _ := sess.StdoutPipe()
	errR, _ := sess.StderrPipe()
	var wg sync.WaitGroup
	wg.Add(2)
	go c.stream(&wg, host, "stdout", outR, &stdout, secret)
	go c.stream(&wg, host, "stderr", errR, &stderr, secret)
	c.log.Debug("ssh run", "host", host, "cmd", shown)
	if err := sess.Start(line); err != nil {
		return Result{}, fmt.Errorf("ssh %s: start `%s`: %w", host, shown, err)
	}
	done := make(chan error, 1)
	go func() { wg.Wait(); done <- sess.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = sess.Signal(ssh.SIGKILL)
		sess.Close()
		return Result{Stdout: stdout.String(), Stderr: stderr.String(), ExitStatus: -1}, fmt.Errorf("%s: `%s`: %w", host, shown, ctx.Err())
	}
	res := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	var exit *ssh.ExitError
	switch {
	case err == nil:
		return res, nil
	case errors.As(err, &exit):
		res.ExitStatus = exit.ExitStatus()
		e := &ExitError{Host: host, Command: shown, Status: res.ExitStatus, StderrTail: tail(res.Stderr, 5)}
		if secret {
			e.StderrTail = "[output hidden]"
		}
		return res, e
	default:
		res.ExitStatus = -1
		return res, fmt.Errorf("%s: `%s`: %w", host, shown, err)
	}
}

// stream copies r into buf and logs each line prefixed with the host.
func (c *Client) stream(wg *sync.WaitGroup, host, name string, r io.Reader, buf *bytes.Buffer, secret bool) {
	defer wg.Done()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		buf.WriteString(sc.Text() + "\n")
		if !secret {
			c.log.Debug(host+": "+sc.Text(), "stream", name)
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
