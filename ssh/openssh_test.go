package ssh

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

const sshdPath = "/usr/sbin/sshd"

func needSSHD(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(sshdPath); err != nil {
		msg := "OpenSSH server not installed (apt-get install openssh-server): skipping tests against a real sshd"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// sshd is a real OpenSSH server on a loopback port, with its own host key.
type sshd struct {
	port    int
	hostKey ssh.PublicKey
	log     *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func startSSHD(t *testing.T, authorized string) *sshd {
	t.Helper()
	dir := t.TempDir()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, _ := ssh.MarshalPrivateKey(priv, "")
	keyFile := filepath.Join(dir, "host_ed25519")
	os.WriteFile(keyFile, pem.EncodeToMemory(block), 0o600)
	os.WriteFile(filepath.Join(dir, "authorized_keys"), []byte(authorized+"\n"), 0o600)
	os.MkdirAll("/run/sshd", 0o755)
	port := freePort(t)
	cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
PidFile %s/sshd.pid
AuthorizedKeysFile %s/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin yes
UsePAM no
AllowTcpForwarding yes
LogLevel DEBUG1
`, port, keyFile, dir, dir)
	cfgFile := filepath.Join(dir, "sshd_config")
	os.WriteFile(cfgFile, []byte(cfg), 0o600)
	cmd := exec.Command(sshdPath, "-D", "-e", "-f", cfgFile)
	logs := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	// A test binary killed before its cleanup takes sshd with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd did not start: %s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	hk, _ := ssh.NewPublicKey(pub)
	return &sshd{port: port, hostKey: hk, log: logs}
}

func (s *sshd) knownHostsLine() string {
	return fmt.Sprintf("[127.0.0.1]:%d %s", s.port, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.hostKey))))
}

func writeKnownHosts(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
	return p
}

func TestOpenSSHKeyAuthKnownHostsQuoting(t *testing.T) {
	needSSHD(t)
	t.Setenv("SSH_AUTH_SOCK", "")
	keyPath, pubLine, _ := operatorKey(t, t.TempDir())
	srv := startSSHD(t, pubLine)
	c, err := New(Options{User: "root", Port: srv.port, IdentityFiles: []string{keyPath}, KnownHosts: []string{writeKnownHosts(t, srv.knownHostsLine())}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Shutdown()
	ctx := context.Background()
	args := []string{"plain", "with space", `it's`, `"double"`, "$(touch /tmp/pwned)", "`id`", "a;b", "*", ""}
	res, err := c.Run(ctx, "127.0.0.1", Command{Argv: append([]string{"printf", `%s\n`}, args...), ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(strings.Join(args, "\n")+"\n", res.Stdout); diff != "" {
		t.Errorf("arguments did not arrive literally (-want +got):\n%s", diff)
	}
	_, err = c.Run(ctx, "127.0.0.1", Command{Argv: []string{"sh", "-c", "echo first >&2; echo oops >&2; exit 3"}})
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Status != 3 || !strings.Contains(ee.Error(), "oops") || !strings.Contains(ee.Error(), "127.0.0.1") {
		t.Fatalf("err = %v, want exit status 3 naming the host with stderr", err)
	}
}

func TestOpenSSHHostKeyVerification(t *testing.T) {
	needSSHD(t)
	t.Setenv("SSH_AUTH_SOCK", "")
	keyPath, pubLine, _ := operatorKey(t, t.TempDir())
	srv := startSSHD(t, pubLine)
	other := startSSHD(t, pubLine)
	ctx := context.Background()
	tests := []struct {
		name  string
		known string
		want  string
	}{
		{"not in known_hosts", fmt.Sprintf("[127.0.0.1]:%d %s", srv.port+100000, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"), "is not in known_hosts"},
		{"changed key", fmt.Sprintf("[127.0.0.1]:%d %s", srv.port, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(other.hostKey)))), "refusing to connect"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(Options{User: "root", Port: srv.port, IdentityFiles: []string{keyPath}, KnownHosts: []string{writeKnownHosts(t, tt.known)}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Shutdown()
			_, err = c.Run(ctx, "127.0.0.1", Command{Argv: []string{"true"}, ReadOnly: true})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if tt.name == "changed key" && !strings.Contains(err.Error(), ssh.FingerprintSHA256(srv.hostKey)) {
				t.Errorf("error does not name the key the host presented: %v", err)
			}
		})
	}
}

func TestOpenSSHAgentAuth(t *testing.T) {
	needSSHD(t)
	_, pubLine, priv := operatorKey(t, t.TempDir())
	srv := startSSHD(t, pubLine)
	// An in-process agent holding the key, on a unix socket like ssh-agent's.
	keyring := agent.NewKeyring()
	if err := keyring.Add(agent.AddedKey{PrivateKey: priv}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer conn.Close(); agent.ServeAgent(keyring, conn) }()
		}
	}()
	t.Setenv("SSH_AUTH_SOCK", sock)
	c, err := New(Options{User: "root", Port: srv.port, KnownHosts: []string{writeKnownHosts(t, srv.knownHostsLine())}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Shutdown()
	res, err := c.Run(context.Background(), "127.0.0.1", Command{Argv: []string{"id", "-un"}, ReadOnly: true})
	if err != nil || strings.TrimSpace(res.Stdout) != "root" {
		t.Fatalf("id -un = %q, %v", res.Stdout, err)
	}
}

func TestOpenSSHJumpHost(t *testing.T) {
	needSSHD(t)
	t.Setenv("SSH_AUTH_SOCK", "")
	keyPath, pubLine, _ := operatorKey(t, t.TempDir())
	bastion := startSSHD(t, pubLine)
	target := startSSHD(t, pubLine)
	c, err := New(Options{
		User: "root", Port: target.port, IdentityFiles: []string{keyPath},
		JumpHost:   fmt.Sprintf("root@127.0.0.1:%d", bastion.port),
		KnownHosts: []string{writeKnownHosts(t, bastion.knownHostsLine(), target.knownHostsLine())},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Shutdown()
	if _, err := c.Run(context.Background(), "127.0.0.1", Command{Argv: []string{"true"}, ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(bastion.log.String(), fmt.Sprintf("port %d", target.port)) {
		t.Errorf("the bastion did not forward the connection to the target:\n%s", bastion.log.String())
	}
}
