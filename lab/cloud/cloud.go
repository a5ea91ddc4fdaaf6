// Package cloud is the lab's OpenStack: an HTTP server speaking enough of Keystone v3,
// Nova v2.1, Glance v2 and Neutron v2.0 for gophercloud (and the openstack CLI) to
// manage servers, with realistic delays, placement on simulated hypervisors, quotas,
// console logs that print SSH host key fingerprints the way cloud-init does, and fault
// injection. Servers can be backed by simulated VMs (Machines).
package cloud

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Machines runs the simulated VMs behind servers. The cloud calls it when a server
// becomes ACTIVE, is rebooted, powered off or deleted.
type Machines interface {
	// Boot starts the VM of a server that became ACTIVE and returns the host key lines
	// cloud-init prints ("256 SHA256:... root@name (ED25519)").
	Boot(ctx context.Context, m Machine) (hostKeyLines []string, err error)
	// Reboot restarts the VM; it returns when the VM is down (it comes back by itself).
	// A hard reboot also starts a VM that is powered off.
	Reboot(ctx context.Context, id string, hard bool) error
	// Stop powers the VM off (os-stop): it stays down until a hard reboot.
	Stop(ctx context.Context, id string) error
	// Delete stops the VM for good.
	Delete(ctx context.Context, id string) error
}

// Machine is what a VM is booted with.
type Machine struct {
	ID, Name, Address string
	// AuthorizedKeys are the public keys of the server's key pair.
	AuthorizedKeys []string
	UserData       []byte
	Metadata       map[string]string
	// Image is the name of the server's image ("debian-13.0-trixie"): the OS the VM runs.
	Image string
}

// Options configure a cloud.
type Options struct {
	// BuildTime is how long a new server stays in BUILD; DeleteTime how long a deleted
	// server still shows; RebootTime how long REBOOT/HARD_REBOOT lasts.
	BuildTime, DeleteTime, RebootTime time.Duration
	// TokenTTL is how long a Keystone token is valid; 1h if zero.
	TokenTTL time.Duration
	// Hypervisors is the number of simulated compute hosts; 8 if zero.
	Hypervisors int
	// Quota limits the project: instances, cores, RAM (MiB). Zero means 100/400/800000.
	Quota Quota
	// AddressPrefix is the first three bytes of server addresses; "127.42.0" if empty.
	AddressPrefix string
	// Machines, if set, runs VMs behind the servers.
	Machines Machines
	// StateFile, if set, is where servers, groups and key pairs are saved after every
	// change and loaded from at start.
	StateFile string
	// Log receives one line per request; nil discards.
	Log *slog.Logger
	// Admin are extra read-only handlers under /_lab/ (path -> handler), e.g. the VMs'
	// command history.
	Admin map[string]http.HandlerFunc
}

// Quota is the project's quota.
type Quota struct {
	Instances, Cores, RAM int
}

// Cloud is a running simulated OpenStack.
type Cloud struct {
	opts Options
	// URL is the base URL; the Keystone endpoint is URL + "/identity/v3".
	URL string

	srv      *http.Server
	ln       net.Listener
	stop     chan struct{}
	bg       sync.WaitGroup
	mu       sync.Mutex
	st       *store
	faults   Faults
	injected []InjectedFault
	writes   map[string]int
	requests int
}

// New starts a cloud listening on addr ("127.0.0.1:0" for any free port), seeded with
// seed (ignored for the kinds already in the state file).
func New(addr string, seed Seed, opts Options) (*Cloud, error) {
	if opts.TokenTTL == 0 {
		opts.TokenTTL = time.Hour
	}
	if opts.Hypervisors == 0 {
		opts.Hypervisors = 8
	}
	if opts.Quota == (Quota{}) {
		opts.Quota = Quota{Instances: 100, Cores: 400, RAM: 800000}
	}
	if opts.AddressPrefix == "" {
		opts.AddressPrefix = "127.42.0"
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cloud: %w", err)
	}
	c := &Cloud{opts: opts, ln: ln, stop: make(chan struct{}), writes: map[string]int{}, URL: "http://" + ln.Addr().String()}
	c.st = newStore(seed)
	if opts.StateFile != "" {
		if err := c.st.load(opts.StateFile); err != nil {
			ln.Close()
			return nil, fmt.Errorf("cloud: %w", err)
		}
	}
	c.srv = &http.Server{Handler: c.routes(), ReadHeaderTimeout: 10 * time.Second}
	c.bg.Add(2)
	go func() { defer c.bg.Done(); _ = c.srv.Serve(ln) }()
	go func() { defer c.bg.Done(); c.loop() }()
	return c, nil
}

// Close stops the server and its background work (VMs are left to their owner).
func (c *Cloud) Close() error {
	close(c.stop)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := c.srv.Shutdown(ctx)
	c.bg.Wait()
	return err
}

// loop advances servers through their states.
func (c *Cloud) loop() {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.advance(time.Now())
		}
	}
}

// AuthURL is the Keystone v3 endpoint for clouds.yaml.
func (c *Cloud) AuthURL() string { return c.URL + "/identity/v3" }

// Writes returns the number of write requests (POST, PUT, PATCH, DELETE) per route
// ("POST /compute/v2.1/servers"), auth requests and console-log reads (a POST action in
// Nova's API) excluded.
func (c *Cloud) Writes() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.writes))
	for k, v := range c.writes {
		out[k] = v
	}
	return out
}

// TotalWrites returns the number of write requests, auth excluded.
func (c *Cloud) TotalWrites() int {
	n := 0
	for _, v := range c.Writes() {
		n += v
	}
	return n
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	h := hex.EncodeToString(b[:])
	return fmt.Sprintf("%s-%s-%s-%s-%s", h[0:8], h[8:12], h[12:16], h[16:20], h[20:32])
}
