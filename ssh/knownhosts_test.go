package ssh

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"example.com/cookbook/dryrun"
)

func hostKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// trusts reports whether c, without pins, accepts key for host.
func trusts(t *testing.T, c *Client, host string, key ssh.PublicKey) bool {
	t.Helper()
	cb, err := c.hostKeyCallback(host)
	if err != nil {
		t.Fatal(err)
	}
	return cb(net.JoinHostPort(host, "2222"), &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2222}, key) == nil
}

func TestLearnedKeysAreReplacedAndForgotten(t *testing.T) {
	dir := t.TempDir()
	learned := filepath.Join(dir, "known_hosts")
	// Lines the cookbook did not write stay as they are.
	other := hostKey(t)
	keep := "# operator's note\nbastion.example " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(other))) + "\n"
	if err := os.WriteFile(learned, []byte(keep), 0o600); err != nil {
		t.Fatal(err)
	}
	gate := &dryrun.Gate{}
	c := &Client{cfg: Options{Port: 2222}, gate: gate, log: slog.New(slog.DiscardHandler), Learned: learned}
	ctx := context.Background()

	old, replacement, b := hostKey(t), hostKey(t), hostKey(t)
	c.learn("worker-7.example:2222", old)
	c.learn("worker-7.example:2222", old) // once only
	c.learn("10.0.0.8:2222", b)
	if !trusts(t, c, "worker-7.example", old) || !trusts(t, c, "10.0.0.8", b) {
		t.Fatal("learned keys are not trusted")
	}
	// The server is replaced under the same name: the new key replaces the old one.
	c.learn("worker-7.example:2222", replacement)
	if trusts(t, c, "worker-7.example", old) {
		t.Error("the replaced server's key is still trusted")
	}
	if !trusts(t, c, "worker-7.example", replacement) {
		t.Error("the new key is not trusted")
	}

	// Dry-run forgets nothing.
	gate.DryRun = true
	before, _ := os.ReadFile(learned)
	if err := c.Forget(ctx, "worker-7.example", "10.0.0.8"); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(learned); string(after) != string(before) {
		t.Errorf("dry-run changed the file:\n%s", after)
	}
	gate.DryRun = false

	if err := c.Forget(ctx, "worker-7.example", "10.0.0.8", "never-seen.example"); err != nil {
		t.Fatal(err)
	}
	if trusts(t, c, "worker-7.example", replacement) || trusts(t, c, "10.0.0.8", b) {
		t.Error("forgotten keys are still trusted")
	}
	data, err := os.ReadFile(learned)
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != keep {
		t.Errorf("file after Forget:\n%s\nwant:\n%s", data, keep)
	}
	if fi, err := os.Stat(learned); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode of %s: %v %v", learned, fi.Mode(), err)
	}
}
