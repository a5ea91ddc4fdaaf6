package ssh

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"

	"example.com/cookbook/dryrun"
	"example.com/cookbook/lab/cloud"
	"example.com/cookbook/lab/vm"
)

// operatorKey writes a new ed25519 key to dir and returns its path and public key line.
func operatorKey(t *testing.T, dir string) (string, string, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}

	sshPub, _ := ssh.NewPublicKey(pub)
	return path, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))), priv
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

var vmCounter atomic.Int32

// newVM boots a simulated VM and returns the fleet, the VM and a client pinned to it.
func newVM(t *testing.T, name string, fleetOpts func(*vm.Fleet)) (*vm.Fleet, *vm.VM, *Client, *dryrun.Gate) {
	t.Helper()
	t.Setenv("SSH_AUTH_SOCK", "")
	dir := t.TempDir()
	keyPath, pubLine, _ := operatorKey(t, dir)
	f := &vm.Fleet{Port: freePort(t), DownTime: 300 * time.Millisecond}
	if fleetOpts != nil {
		fleetOpts(f)
	}
	t.Cleanup(f.Close)
	addr := fmt.Sprintf("127.43.%d.%d", 1+os.Getpid()%200, 10+vmCounter.Add(1))
	id := fmt.Sprintf("id-%s", name)
	lines, err := f.Boot(context.Background(), cloud.Machine{ID: id, Name: name, Address: addr, AuthorizedKeys: []string{pubLine}})
	if err != nil {
		t.Fatal(err)
	}
	gate := &dryrun.Gate{}
	c, err := New(Options{User: "root", Port: f.Port, IdentityFiles: []string{keyPath}, Gate: gate})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Shutdown() })
	fp := strings.Fields(lines[0])[1]
	c.Pin(addr, []string{fp})
	return f, f.VM(id), c, gate
}

func TestCommandsOnSimulatedVM(t *testing.T) {
	f, v, c, _ := newVM(t, "tb-worker-1", func(f *vm.Fleet) { f.Domain = "lab.example" })
	ctx := context.Background()
	host := v.Address
	tests := []struct {
		name       string
		cmd        Command
		wantOut    string
		wantStatus int
	}{
		{"hostname", Command{Argv: []string{"hostname"}, ReadOnly: true}, "tb-worker-1\n", 0},
		{"fqdn", Command{Argv: []string{"hostname", "-f"}, ReadOnly: true}, "tb-worker-1.lab.example\n", 0},
		{"unknown", Command{Argv: []string{"frobnicate", "--now"}}, "", 127},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := c.Run(ctx, host, tt.cmd)
			if tt.wantStatus != 0 {
				var ee *ExitError
				if !errors.As(err, &ee) || ee.Status != tt.wantStatus || !strings.Contains(ee.Error(), "command not found") || !strings.Contains(ee.Error(), host) {
					t.Fatalf("err = %v, want exit %d naming host and stderr", err, tt.wantStatus)
				}
				return
			}
			if err != nil || res.Stdout != tt.wantOut {
				t.Fatalf("got %q, %v", res.Stdout, err)
			}
		})
	}
	// Arguments with spaces, quotes and $(...) arrive literally.
	argv := []string{"mkdir", "-p", "/srv/a b", `it's "quoted"`, "$(rm -rf /)", "`id`"}
	if _, err := c.Run(ctx, host, Command{Argv: argv}); err != nil {
		t.Fatal(err)
	}
	h := f.History()
	if diff := cmp.Diff(argv, h[len(h)-1].Argv); diff != "" {
		t.Errorf("argv on the VM (-want +got):\n%s", diff)
	}
	// The cluster's sudo setting runs every command through sudo -n.
	c.cfg.Sudo = true
	res, err := c.Run(ctx, host, Command{Argv: []string{"hostname"}, ReadOnly: true})
	c.cfg.Sudo = false
	if err != nil || res.Stdout != "tb-worker-1\n" {
		t.Errorf("hostname through sudo = %q, %v", res.Stdout, err)
	}
}

func TestTimeoutAndCancel(t *testing.T) {
	_, v, c, _ := newVM(t, "tb-hang-1", func(f *vm.Fleet) { f.HangReboot = map[string]bool{"tb-hang-1": true} })
	start := time.Now()
	_, err := c.Run(context.Background(), v.Address, Command{Argv: []string{"systemctl", "reboot"}, Timeout: 300 * time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline error", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(200 * time.Millisecond); cancel() }()
	_, err = c.Run(ctx, v.Address, Command{Argv: []string{"systemctl", "reboot"}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want cancellation", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("timeouts took %s", d)
	}
}

func TestHostKeyPinning(t *testing.T) {
	_, v, c, _ := newVM(t, "tb-pin-1", nil)
	ctx := context.Background()
	if _, err := c.Run(ctx, v.Address, Command{Argv: []string{"hostname"}, ReadOnly: true}); err != nil {
		t.Fatalf("pinned key refused: %v", err)
	}
	c.Close()
	c.Pin(v.Address, []string{"SHA256:somebodyElsesKey"})
	_, err := c.Run(ctx, v.Address, Command{Argv: []string{"hostname"}, ReadOnly: true})
	var hk *HostKeyError
	if !errors.As(err, &hk) || !strings.Contains(err.Error(), v.Address) || !strings.Contains(err.Error(), "SHA256:somebodyElsesKey") || !strings.Contains(err.Error(), ssh.FingerprintSHA256(v.PublicKey())) {
		t.Fatalf("err = %v, want a host key error naming the host and both fingerprints", err)
	}
}

func TestRebootProvenByBootID(t *testing.T) {
	_, v, c, _ := newVM(t, "tb-reboot-1", nil)
	ctx := context.Background()
	old, err := c.BootID(ctx, v.Address)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Reboot(ctx, v.Address, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got == old || got != v.BootID() {
		t.Errorf("boot id %s -> %s (VM says %s)", old, got, v.BootID())
	}
}

// TestLongRebootSaysWhatItWaitsFor: while a host is down for longer than ReportEvery, the
// wait logs what it waits for, the last answer and since when.
func TestLongRebootSaysWhatItWaitsFor(t *testing.T) {
	_, v, c, _ := newVM(t, "tb-slow-1", func(f *vm.Fleet) { f.DownTime = 2500 * time.Millisecond })
	var logs bytes.Buffer
	c.log = slog.New(slog.NewTextHandler(&logs, nil))
	c.ReportEvery = 900 * time.Millisecond
	if _, err := c.Reboot(context.Background(), v.Address, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "waiting for "+v.Address+" to come back with a new boot id"); n < 1 || n > 3 || !strings.Contains(logs.String(), "waited=") {
		t.Errorf("%d progress lines while down 2.5s, one per 0.9s:\n%s", n, logs.String())
	}
}

func TestHardRebootFallback(t *testing.T) {
	f, v, c, _ := newVM(t, "tb-stuck-1", func(f *vm.Fleet) { f.HangReboot = map[string]bool{"tb-stuck-1": true} })
	ctx := context.Background()
	old, _ := c.BootID(ctx, v.Address)
	c.RebootTimeout = 300 * time.Millisecond
	err := c.IssueReboot(ctx, v.Address)
	if !errors.Is(err, ErrRebootNotIssued) {
		t.Fatalf("err = %v, want ErrRebootNotIssued so the caller can hard-reboot", err)
	}
	// The caller's fallback: an OpenStack hard reboot (here, what the cloud would do).
	if err := f.Reboot(ctx, v.ID, true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitRebooted(ctx, v.Address, old, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestDryRunRunsOnlyReads(t *testing.T) {
	f, v, c, gate := newVM(t, "tb-dry-1", nil)
	gate.DryRun = true
	ctx := context.Background()
	if _, err := c.Run(ctx, v.Address, Command{Argv: []string{"hostname"}, ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Run(ctx, v.Address, Command{Argv: []string{"apt-get", "upgrade", "-y"}}); err != nil {
		t.Fatal(err)
	}
	for _, r := range f.History() {
		if r.Argv[0] != "hostname" {
			t.Errorf("dry-run ran %v", r.Argv)
		}
	}
}

func TestSilentHostTimesOut(t *testing.T) {
	t.Setenv("SSH_AUTH_SOCK", "")
	keyPath, _, _ := operatorKey(t, t.TempDir())
	// A host that accepts TCP and never speaks SSH.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	accepting := make(chan struct{})
	defer func() {
		ln.Close()
		<-accepting // held is the accept loop's until it returns
		for _, c := range held {
			c.Close()
		}
	}()
	go func() {
		defer close(accepting)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	tests := []struct {
		name    string
		dial    time.Duration
		timeout time.Duration
		want    error
	}{
		{"dial timeout", 200 * time.Millisecond, time.Minute, context.DeadlineExceeded},
		{"command timeout", time.Minute, 200 * time.Millisecond, context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(Options{User: "root", Port: port, IdentityFiles: []string{keyPath}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Shutdown()
			c.DialTimeout = tt.dial
			c.Pin("127.0.0.1", []string{"SHA256:whatever"})
			start := time.Now()
			_, err = c.Run(context.Background(), "127.0.0.1", Command{Argv: []string{"hostname"}, ReadOnly: true, Timeout: tt.timeout})
			if !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %s", d)
			}
		})
	}
}

// TestConcurrentRunsOneConnection: commands run at once on one host share one
// connection, and Close leaves none open on the VM (two callers dialing at once used to
// both keep theirs, the first out of Close's reach).
func TestConcurrentRunsOneConnection(t *testing.T) {
	_, v, c, _ := newVM(t, "tb-conc-1", nil)
	ctx := context.Background()
	for round := 0; round < 20; round++ {
		errs := make(chan error, 8)
		for i := 0; i < 8; i++ {
			go func() {
				_, err := c.Run(ctx, v.Address, Command{Argv: []string{"true"}, ReadOnly: true})
				errs <- err
			}()
		}
		for i := 0; i < 8; i++ {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		var n int
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if n = v.OpenConns(); n == 0 {
				break
			}
		}
		if n != 0 {
			t.Fatalf("round %d: %d SSH connection(s) left open on the VM after Close", round, n)
		}
	}
}
