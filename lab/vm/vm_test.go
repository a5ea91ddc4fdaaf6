package vm

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/lab"
	"example.com/cookbook/lab/cloud"
)

// cp is the lab control plane of this test package, nil when its binaries are missing.
var cp *lab.ControlPlane

func TestMain(m *testing.M) { os.Exit(lab.RunTests(m, &cp)) }

func TestSplitWords(t *testing.T) {
	tests := []struct {
		name string
		line string
		want []string
	}{
		{"plain", "hostname -f", []string{"hostname", "-f"}},
		{"single quotes", `mkdir -p '/srv/a b'`, []string{"mkdir", "-p", "/srv/a b"}},
		{"escaped quote", `echo 'it'\''s'`, []string{"echo", "it's"}},
		{"dollar stays literal", `echo '$(rm -rf /)' '` + "`id`'", []string{"echo", "$(rm -rf /)", "`id`"}},
		{"double quotes", `echo "a \"b\" \$c"`, []string{"echo", `a "b" $c`}},
		{"empty argument", `printf '%s' ''`, []string{"printf", "%s", ""}},
		{"backslash", `echo a\ b`, []string{"echo", "a b"}},
		{"extra blanks", "  uptime \t ", []string{"uptime"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := splitWords(tt.line)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("splitWords(%q) (-want +got):\n%s", tt.line, diff)
			}
		})
	}
	if _, err := splitWords(`echo 'open`); err == nil {
		t.Error("an unterminated quote is accepted")
	}
}

// operator is the lab operator's key pair.
type operator struct {
	keyFile string
	pubLine string
	signer  ssh.Signer
}

func newOperator(t *testing.T) operator {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return operator{keyFile: keyFile, pubLine: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))), signer: signer}
}

var addrCounter atomic.Int32

// newAddress returns a loopback address no other test (of this or a concurrent run) uses.
func newAddress() string {
	return fmt.Sprintf("127.44.%d.%d", 1+os.Getpid()%250, 10+addrCounter.Add(1))
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

// newFleet returns a fleet that accepts op's key, closed at the end of the test.
func newFleet(t *testing.T, op operator) *Fleet {
	t.Helper()
	f := &Fleet{Port: freePort(t), Domain: "lab.example", OperatorKeys: []string{op.pubLine}, DownTime: 300 * time.Millisecond, Programs: []string{"run-provision"}}
	t.Cleanup(f.Close)
	return f
}

func boot(t *testing.T, f *Fleet, name string, metadata map[string]string) *VM {
	t.Helper()
	id := "id-" + name
	lines, err := f.Boot(context.Background(), cloud.Machine{ID: id, Name: name, Address: newAddress(), Metadata: metadata})
	if err != nil {
		t.Fatal(err)
	}
	v := f.VM(id)
	want := fmt.Sprintf("256 %s root@%s (ED25519)", ssh.FingerprintSHA256(v.PublicKey()), name)
	if len(lines) != 1 || lines[0] != want {
		t.Fatalf("host key lines %q, want [%q]", lines, want)
	}
	return v
}

// dial connects with x/crypto/ssh, verifying the VM's host key.
func dial(t *testing.T, f *Fleet, v *VM, op operator) (*ssh.Client, error) {
	t.Helper()
	cfg := &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(op.signer)}, HostKeyCallback: ssh.FixedHostKey(v.PublicKey()), Timeout: 5 * time.Second}
	return ssh.Dial("tcp", net.JoinHostPort(v.Address, strconv.Itoa(f.Port)), cfg)
}

// run runs one command line in a new session and returns stdout, stderr and the exit code.
func run(t *testing.T, cl *ssh.Client, line string) (string, string, int) {
	t.Helper()
	sess, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	var out, errb bytes.Buffer
	sess.Stdout, sess.Stderr = &out, &errb
	err = sess.Run(line)
	var ee *ssh.ExitError
	switch {
	case err == nil:
		return out.String(), errb.String(), 0
	case errors.As(err, &ee):
		return out.String(), errb.String(), ee.ExitStatus()
	default:
		t.Fatalf("%s: %v", line, err)
		return "", "", 0
	}
}

func TestCommands(t *testing.T) {
	op := newOperator(t)
	f := newFleet(t, op)
	v := boot(t, f, "tb-worker-1", nil)
	cl, err := dial(t, f, v, op)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	tests := []struct {
		name     string
		line     string
		wantOut  string // a substring of stdout
		wantErr  string // a substring of stderr
		wantCode int
	}{
		{"hostname", "hostname", "tb-worker-1\n", "", 0},
		{"fqdn", "hostname -f", "tb-worker-1.lab.example\n", "", 0},
		{"boot id", "cat /proc/sys/kernel/random/boot_id", v.BootID() + "\n", "", 0},
		{"uptime", "uptime", "load average", "", 0},
		{"sudo prefix", "sudo -n -- hostname", "tb-worker-1\n", "", 0},
		{"apt-get", "sudo apt-get install -y 'kubeadm=1.*'", "Reading package lists", "", 0},
		{"kubeadm upgrade node without a cluster", "kubeadm upgrade node", "", "cannot reach the API server", 1},
		{"restart kubelet", "systemctl restart kubelet", "", "", 0},
		{"provisioning program", "run-provision --role worker", "", "", 0},
		{"token on a worker", "kubeadm token create --print-join-command", "", "admin.conf", 1},
		{"join without token", "kubeadm join 127.0.0.1:6443", "", "--token is required", 1},
		{"unknown", "frobnicate --now", "", "bash: frobnicate: command not found", 127},
		{"bad quoting", "echo 'open", "", "syntax error", 2},
		{"os-release without an image", "cat /etc/os-release", "VERSION_CODENAME=bookworm\n", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errs, code := run(t, cl, tt.line)
			if code != tt.wantCode || !strings.Contains(out, tt.wantOut) || !strings.Contains(errs, tt.wantErr) {
				t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit %d, stdout ~%q, stderr ~%q", tt.line, code, out, errs, tt.wantCode, tt.wantOut, tt.wantErr)
			}
		})
	}
	h := f.History()
	if len(h) != len(tests) {
		t.Fatalf("history has %d records, want %d", len(h), len(tests))
	}
	if diff := cmp.Diff([]string{"sudo", "apt-get", "install", "-y", "kubeadm=1.*"}, h[5].Argv); diff != "" {
		t.Errorf("recorded argv (-want +got):\n%s", diff)
	}
	for i, r := range h {
		if r.VM != "tb-worker-1" || r.ExitCode != tests[i].wantCode || r.Time.IsZero() {
			t.Errorf("record %d = %+v", i, r)
		}
	}
}

// TestOSRelease: a VM says the release of the image it was booted from.
func TestOSRelease(t *testing.T) {
	op := newOperator(t)
	f := newFleet(t, op)
	for _, tt := range []struct{ name, image, codename, version string }{
		{"bookworm", "debian-12.0-bookworm", "bookworm", `VERSION_ID="12"`},
		{"trixie", "debian-13.0-trixie", "trixie", `VERSION_ID="13"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := f.Boot(context.Background(), cloud.Machine{ID: "id-" + tt.name, Name: "tb-" + tt.name + "-1", Address: newAddress(), Image: tt.image}); err != nil {
				t.Fatal(err)
			}
			v := f.VM("id-" + tt.name)
			cl, err := dial(t, f, v, op)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			out, _, code := run(t, cl, "cat /etc/os-release")
			if code != 0 || !strings.Contains(out, "VERSION_CODENAME="+tt.codename+"\n") || !strings.Contains(out, tt.version) {
				t.Errorf("os-release: exit %d, %q; want %s, %s", code, out, tt.codename, tt.version)
			}
			if out, _, _ := run(t, cl, "lsb_release -cs"); out != tt.codename+"\n" {
				t.Errorf("lsb_release -cs = %q, want %q", out, tt.codename)
			}
		})
	}
}

func TestAuthorizedKeys(t *testing.T) {
	op, server, stranger := newOperator(t), newOperator(t), newOperator(t)
	f := newFleet(t, op)
	id := "id-tb-keys-1"
	if _, err := f.Boot(context.Background(), cloud.Machine{ID: id, Name: "tb-keys-1", Address: newAddress(), AuthorizedKeys: []string{server.pubLine}}); err != nil {
		t.Fatal(err)
	}
	v := f.VM(id)
	tests := []struct {
		name string
		key  operator
		ok   bool
	}{
		{"operator key", op, true},
		{"server key pair", server, true},
		{"stranger", stranger, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl, err := dial(t, f, v, tt.key)
			if err == nil {
				cl.Close()
			}
			if (err == nil) != tt.ok {
				t.Errorf("dial: %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// waitBootID polls read until it returns a boot id other than old.
func waitBootID(t *testing.T, old string, timeout time.Duration, read func() (string, error)) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		id, err := read()
		if err == nil && id != "" && id != old {
			return id
		}
		last = err
		select {
		case <-ctx.Done():
			t.Fatalf("no new boot id after %s (last error: %v)", timeout, last)
		case <-tick.C:
		}
	}
}

func TestRebootXCrypto(t *testing.T) {
	op := newOperator(t)
	f := newFleet(t, op)
	v := boot(t, f, "tb-reboot-1", nil)
	cl, err := dial(t, f, v, op)
	if err != nil {
		t.Fatal(err)
	}
	old, _, _ := run(t, cl, "cat /proc/sys/kernel/random/boot_id")
	old = strings.TrimSpace(old)
	sess, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	err = sess.Run("sudo systemctl reboot")
	var missing *ssh.ExitMissingError
	if err == nil || (!errors.As(err, &missing) && !strings.Contains(err.Error(), "EOF")) {
		t.Errorf("reboot: %v, want the session to drop without an exit status", err)
	}
	cl.Close()
	// SSH goes down (the reboot starts a moment after the session dropped) ...
	deadline := time.Now().Add(2 * time.Second)
	for {
		cl, err := dial(t, f, v, op)
		if err != nil {
			break
		}
		cl.Close()
		if time.Now().After(deadline) {
			t.Fatal("SSH is still up 2s after the reboot")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// ... and comes back with a new boot id.
	got := waitBootID(t, old, 10*time.Second, func() (string, error) {
		cl, err := dial(t, f, v, op)
		if err != nil {
			return "", err
		}
		defer cl.Close()
		out, _, _ := run(t, cl, "cat /proc/sys/kernel/random/boot_id")
		return strings.TrimSpace(out), nil
	})
	if got != v.BootID() {
		t.Errorf("boot id %s, the VM says %s", got, v.BootID())
	}
}

func TestHangRebootUntilHardReboot(t *testing.T) {
	op := newOperator(t)
	f := newFleet(t, op)
	f.HangReboot = map[string]bool{"tb-stuck-1": true}
	v := boot(t, f, "tb-stuck-1", nil)
	old := v.BootID()
	cl, err := dial(t, f, v, op)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	sess, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sess.Run("systemctl reboot") }()
	select {
	case err := <-done:
		t.Fatalf("a hanging reboot returned: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := f.Reboot(context.Background(), v.ID, true); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the hanging session did not end with the hard reboot")
	}
	waitBootID(t, old, 10*time.Second, func() (string, error) { return v.BootID(), nil })
}

// openssh runs the OpenSSH client on the VM with strict host key checking.
func openssh(t *testing.T, f *Fleet, v *VM, op operator, knownHosts, line string) (string, int) {
	t.Helper()
	cmd := exec.Command("ssh", "-F", "none", "-i", op.keyFile, "-p", strconv.Itoa(f.Port),
		"-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile="+knownHosts, "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
		"root@"+v.Address, line)
	cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &ee):
		return out.String() + errb.String(), ee.ExitCode()
	default:
		t.Fatalf("ssh: %v", err)
		return "", 0
	}
}

func TestOpenSSHClientSurvivesReboot(t *testing.T) {
	if _, err := exec.LookPath("ssh"); err != nil {
		msg := "the OpenSSH client is not installed (apt-get install openssh-client)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	op := newOperator(t)
	f := newFleet(t, op)
	v := boot(t, f, "tb-openssh-1", nil)
	knownHosts := filepath.Join(t.TempDir(), "known_hosts")
	line := fmt.Sprintf("[%s]:%d %s", v.Address, f.Port, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(v.PublicKey()))))
	if err := os.WriteFile(knownHosts, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := openssh(t, f, v, op, knownHosts, "hostname -f")
	if code != 0 || out != "tb-openssh-1.lab.example\n" {
		t.Fatalf("hostname -f: exit %d, %q", code, out)
	}
	// OpenSSH quotes nothing: the caller's quoting arrives as written.
	out, code = openssh(t, f, v, op, knownHosts, "mkdir -p '/srv/with space' 'it'\\''s'")
	if code != 0 {
		t.Fatalf("mkdir: exit %d, %s", code, out)
	}
	h := f.History()
	if diff := cmp.Diff([]string{"mkdir", "-p", "/srv/with space", "it's"}, h[len(h)-1].Argv); diff != "" {
		t.Errorf("argv on the VM (-want +got):\n%s", diff)
	}
	if out, code = openssh(t, f, v, op, knownHosts, "no-such-tool"); code != 127 || !strings.Contains(out, "command not found") {
		t.Errorf("unknown command: exit %d, %q", code, out)
	}
	old, _ := openssh(t, f, v, op, knownHosts, "cat /proc/sys/kernel/random/boot_id")
	old = strings.TrimSpace(old)
	if _, code = openssh(t, f, v, op, knownHosts, "sudo systemctl reboot"); code != 255 {
		t.Errorf("reboot: ssh exit %d, want 255 (the connection dropped)", code)
	}
	got := waitBootID(t, old, 15*time.Second, func() (string, error) {
		out, code := openssh(t, f, v, op, knownHosts, "cat /proc/sys/kernel/random/boot_id")
		if code != 0 {
			return "", fmt.Errorf("exit %d: %s", code, out)
		}
		return strings.TrimSpace(out), nil
	})
	if got != v.BootID() {
		t.Errorf("boot id %s, the VM says %s", got, v.BootID())
	}
	// A replaced host key is refused by OpenSSH too.
	other := boot(t, newFleet(t, op), "tb-openssh-2", nil)
	bad := fmt.Sprintf("[%s]:%d %s", v.Address, f.Port, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(other.PublicKey()))))
	if err := os.WriteFile(knownHosts, []byte(bad+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code = openssh(t, f, v, op, knownHosts, "hostname"); code != 255 || !strings.Contains(out, "HOST IDENTIFICATION HAS CHANGED") {
		t.Errorf("changed host key: exit %d, %q", code, out)
	}
}

// TestKubeadmJoin joins a fresh VM with a token from a control VM against the lab's
// kube-apiserver, then reboots it and removes it.
func TestKubeadmJoin(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	op := newOperator(t)
	f := newFleet(t, op)
	f.Cluster = &KubeCluster{CP: cp}
	control := boot(t, f, "tb-vmtest-control-1", map[string]string{"cookbook-role": "control"})
	worker := boot(t, f, "tb-vmtest-worker-1", nil)
	t.Cleanup(func() { _ = cp.RemoveNode(context.Background(), worker.Name) })

	ccl, err := dial(t, f, control, op)
	if err != nil {
		t.Fatal(err)
	}
	defer ccl.Close()
	join, errs, code := run(t, ccl, "sudo kubeadm token create --print-join-command")
	if code != 0 {
		t.Fatalf("token create: exit %d: %s", code, errs)
	}
	words := strings.Fields(join)
	if len(words) != 7 || words[0] != "kubeadm" || words[1] != "join" || words[3] != "--token" || !strings.HasPrefix(words[6], "sha256:") {
		t.Fatalf("join command %q", join)
	}
	tokenID, _, _ := strings.Cut(words[4], ".")
	// The real kubeadm wrote the token's Secret (its fields, 24 hours by default) and
	// pinned the cluster CA's public key in the join command.
	sec, err := cp.Client.CoreV1().Secrets("kube-system").Get(ctx, "bootstrap-token-"+tokenID, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("no bootstrap token Secret: %v", err)
	}
	exp, err := time.Parse(time.RFC3339, string(sec.Data["expiration"]))
	if sec.Type != "bootstrap.kubernetes.io/token" || string(sec.Data["token-id"]) != tokenID || "bootstrap-token-"+tokenID+"."+string(sec.Data["token-secret"]) != "bootstrap-token-"+words[4] ||
		string(sec.Data["usage-bootstrap-authentication"]) != "true" || string(sec.Data["usage-bootstrap-signing"]) != "true" ||
		string(sec.Data["auth-extra-groups"]) != "system:bootstrappers:kubeadm:default-node-token" || err != nil || time.Until(exp) < 23*time.Hour || time.Until(exp) > 24*time.Hour {
		t.Errorf("bootstrap token Secret: type %s, data %q", sec.Type, sec.Data)
	}
	if words[2] != strings.TrimPrefix(cp.RESTConfig.Host, "https://") {
		t.Errorf("join command's API server %s, want %s", words[2], cp.RESTConfig.Host)
	}
	caPEM := cp.RESTConfig.CAData
	if len(caPEM) == 0 {
		if caPEM, err = os.ReadFile(cp.RESTConfig.CAFile); err != nil {
			t.Fatal(err)
		}
	}
	block, _ := pem.Decode(caPEM)
	if block == nil {
		t.Fatal("the lab's kubeconfig has no CA")
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if pin := sha256.Sum256(ca.RawSubjectPublicKeyInfo); words[6] != "sha256:"+hex.EncodeToString(pin[:]) {
		t.Errorf("join command's CA hash %s, want the cluster CA's public key pin %x", words[6], pin)
	}
	// kubeadm's flags: --ttl, and what it refuses.
	out, errs, code := run(t, ccl, "sudo kubeadm token create --ttl 30m")
	short := strings.TrimSpace(out)
	if code != 0 || !regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16}$`).MatchString(short) {
		t.Fatalf("token create --ttl 30m: exit %d, %q, %s", code, out, errs)
	}
	sec, err = cp.Client.CoreV1().Secrets("kube-system").Get(ctx, "bootstrap-token-"+short[:6], metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if exp, err := time.Parse(time.RFC3339, string(sec.Data["expiration"])); err != nil || time.Until(exp) < 29*time.Minute || time.Until(exp) > 30*time.Minute {
		t.Errorf("token create --ttl 30m expires %s", sec.Data["expiration"])
	}
	if out, errs, code := run(t, ccl, "sudo kubeadm token create --ttl soon"); code != 1 || out != "" || !strings.Contains(errs, `invalid argument "soon" for "--ttl" flag`) {
		t.Errorf("token create --ttl soon: exit %d, %q, %s", code, out, errs)
	}
	if out, errs, code := run(t, ccl, "sudo kubeadm token list"); code != 0 || !regexp.MustCompile(`(?m)^TOKEN\s+TTL\s+EXPIRES\s+USAGES\s+DESCRIPTION\s+EXTRA GROUPS$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(short)+`\s+2[89]m\s+\S+\s+authentication,signing\s+<none>\s+system:bootstrappers:kubeadm:default-node-token$`).MatchString(out) {
		t.Errorf("token list: exit %d, %q, %s", code, out, errs)
	}
	if out, errs, code := run(t, ccl, "sudo kubeadm token delete "+short); code != 0 || out != fmt.Sprintf("bootstrap token %q deleted\n", short[:6]) {
		t.Errorf("token delete of a whole token: exit %d, %q, %s", code, out, errs)
	}

	wcl, err := dial(t, f, worker, op)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(join, words[4], tokenID+".0000000000000000", 1)
	if _, errs, code := run(t, wcl, "sudo "+bad); code != 1 || !strings.Contains(errs, "wrong secret") {
		t.Errorf("join with a wrong token: exit %d, %s", code, errs)
	}
	f.FailJoins(worker.Name, true)
	if _, errs, code := run(t, wcl, "sudo "+join); code != 1 || !strings.Contains(errs, "container runtime is not running") {
		t.Errorf("join with FailJoins: exit %d, %s", code, errs)
	}
	f.FailJoins(worker.Name, false)
	if _, errs, code := run(t, wcl, "sudo "+join); code != 0 {
		t.Fatalf("join: exit %d: %s", code, errs)
	}
	wcl.Close()

	// The token is listed on the control VM until it is deleted; only there.
	if out, _, code := run(t, ccl, "sudo kubeadm token list"); code != 0 || !strings.Contains(out, words[4]) {
		t.Errorf("token list: exit %d, %q; want it to list %s", code, out, tokenID)
	}
	if _, errs, code := run(t, redial(t, f, worker, op), "kubeadm token delete "+tokenID); code != 1 || !strings.Contains(errs, "admin.conf") {
		t.Errorf("token delete on a worker: exit %d, %s", code, errs)
	}
	if out, errs, code := run(t, ccl, "sudo kubeadm token delete "+tokenID); code != 0 || out != fmt.Sprintf("bootstrap token %q deleted\n", tokenID) {
		t.Errorf("token delete: exit %d, %q, %s", code, out, errs)
	}
	if out, _, code := run(t, ccl, "sudo kubeadm token list"); code != 0 || strings.Contains(out, tokenID) {
		t.Errorf("token list after delete: exit %d, %q", code, out)
	}
	if _, errs, code := run(t, ccl, "sudo kubeadm token delete "+tokenID); code != 1 || !strings.Contains(errs, "not found") {
		t.Errorf("deleting a deleted token: exit %d, %s", code, errs)
	}
	if _, errs, code := run(t, ccl, "sudo kubeadm token delete NOT-A-TOKEN"); code != 1 || !strings.Contains(errs, "didn't match pattern") {
		t.Errorf("deleting a malformed token: exit %d, %s", code, errs)
	}
	if err := cp.WaitNodeReady(ctx, worker.Name, true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	n, err := cp.Client.CoreV1().Nodes().Get(ctx, worker.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n.Annotations[lab.KwokAnnotation] != "fake" || n.Status.NodeInfo.BootID != worker.BootID() || n.Labels["kubernetes.io/hostname"] != worker.Name || n.Status.NodeInfo.KubeletVersion == "" {
		t.Errorf("node %s: annotations %v, labels %v, nodeInfo %+v; want kwok-managed with boot id %s", n.Name, n.Annotations, n.Labels, n.Status.NodeInfo, worker.BootID())
	}

	// A reboot takes the Node NotReady, and it comes back with the VM's new boot id.
	old := worker.BootID()
	if err := f.Reboot(ctx, worker.ID, false); err != nil {
		t.Fatal(err)
	}
	if err := cp.WaitNodeReady(ctx, worker.Name, false, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := cp.WaitNodeReady(ctx, worker.Name, true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	newID := waitBootID(t, old, 10*time.Second, func() (string, error) { return worker.BootID(), nil })
	if n, err = cp.Client.CoreV1().Nodes().Get(ctx, worker.Name, metav1.GetOptions{}); err != nil || n.Status.NodeInfo.BootID != newID {
		t.Errorf("node boot id after the reboot: %v, %v; want %s", n.Status.NodeInfo.BootID, err, newID)
	}

	// kubeadm reset leaves the Node NotReady; the cookbook deletes the object.
	wcl, err = dial(t, f, worker, op)
	if err != nil {
		t.Fatal(err)
	}
	defer wcl.Close()
	if _, errs, code := run(t, wcl, "sudo kubeadm reset -f"); code != 0 {
		t.Fatalf("reset: exit %d: %s", code, errs)
	}
	if err := cp.WaitNodeReady(ctx, worker.Name, false, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if worker.Joined() {
		t.Error("the VM still counts as joined after kubeadm reset")
	}
}

// redial dials the VM again, closed at the end of the test.
func redial(t *testing.T, f *Fleet, v *VM, op operator) *ssh.Client {
	t.Helper()
	cl, err := dial(t, f, v, op)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// TestCloudInitRace: SSH answers at once, but until cloud-init has finished (its
// boot-finished file) provisioning commands fail, as they race with it on a real VM.
func TestCloudInitRace(t *testing.T) {
	op := newOperator(t)
	f := newFleet(t, op)
	f.CloudInitTime = 700 * time.Millisecond
	v := boot(t, f, "tb-worker-9", nil)
	cl, err := dial(t, f, v, op)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	tests := []struct {
		line     string
		wantErr  string
		wantCode int
	}{
		{"hostname", "", 0},
		{"test -e /var/lib/cloud/instance/boot-finished", "", 1},
		{"sudo -n -- apt-get update", "Could not get lock /var/lib/dpkg/lock-frontend", 100},
		{"run-provision --role worker", "cloud-init is still running", 1},
	}
	for _, tt := range tests {
		if _, errs, code := run(t, cl, tt.line); code != tt.wantCode || !strings.Contains(errs, tt.wantErr) {
			t.Errorf("before boot-finished: %s: exit %d, stderr %q; want exit %d, stderr ~%q", tt.line, code, errs, tt.wantCode, tt.wantErr)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for !v.CloudInitDone() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	for _, line := range []string{"test -e /var/lib/cloud/instance/boot-finished", "sudo -n -- apt-get update", "run-provision --role worker", "test -e /nonexistent"} {
		want := 0
		if line == "test -e /nonexistent" {
			want = 1
		}
		if _, errs, code := run(t, cl, line); code != want {
			t.Errorf("after boot-finished: %s: exit %d, stderr %q; want %d", line, code, errs, want)
		}
	}
}

// TestFstabMountsAfterReboot: a mount is gone after a reboot unless /etc/fstab lists its
// filesystem; mkfs refuses a device with a filesystem unless forced.
func TestFstabMountsAfterReboot(t *testing.T) {
	op := newOperator(t)
	f := newFleet(t, op)
	v := boot(t, f, "tb-worker-8", nil)
	cl := redial(t, f, v, op)
	v.SetFilesystem("/dev/sdc", Filesystem{Type: "xfs", UUID: "1111-2222", Label: "old"})
	for _, tt := range []struct {
		line, wantOut, wantErr string
		wantCode               int
	}{
		{"blkid /dev/sdb", "", "", 2},
		{"mkfs.ext4 -L extra /dev/sdb", "Writing superblocks", "", 0},
		{"blkid -s TYPE -o value /dev/sdb", "ext4\n", "", 0},
		{"mkfs.ext4 -L extra /dev/sdb", "", "contains a ext4 file system labelled 'extra'", 1},
		{"blkid -s TYPE -o value /dev/sdc", "xfs\n", "", 0},
		{"mkdir -p /srv/a", "", "", 0},
		{"mount /dev/sdc /srv/b", "", "", 0},
		{"findmnt -n /srv/b", "/srv/b /dev/sdc", "", 0},
		{"mount -a", "", "", 0},
	} {
		out, errs, code := run(t, cl, tt.line)
		if code != tt.wantCode || !strings.Contains(out, tt.wantOut) || !strings.Contains(errs, tt.wantErr) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit %d, stdout ~%q, stderr ~%q", tt.line, code, out, errs, tt.wantCode, tt.wantOut, tt.wantErr)
		}
	}
	uuid, _, _ := run(t, cl, "blkid -s UUID -o value /dev/sdb")
	line := "UUID=" + strings.TrimSpace(uuid) + " /srv/a ext4 defaults,nofail 0 2"
	if _, errs, code := run(t, cl, "sed -i '$a "+line+"' /etc/fstab"); code != 0 {
		t.Fatalf("sed: %d %s", code, errs)
	}
	if _, errs, code := run(t, cl, "mount -a"); code != 0 {
		t.Fatalf("mount -a: %d %s", code, errs)
	}
	if out, _, _ := run(t, cl, "cat /etc/fstab"); !strings.Contains(out, line+"\n") {
		t.Errorf("fstab:\n%s", out)
	}
	cl.Close()
	old := v.BootID()
	if err := f.Reboot(context.Background(), v.ID, false); err != nil {
		t.Fatal(err)
	}
	waitBootID(t, old, 10*time.Second, func() (string, error) { return v.BootID(), nil })
	if dev, ok := v.Mounted("/srv/a"); !ok || dev != "/dev/sdb" {
		t.Errorf("/srv/a after the reboot: %q %v; want /dev/sdb (in fstab)", dev, ok)
	}
	if dev, ok := v.Mounted("/srv/b"); ok {
		t.Errorf("/srv/b after the reboot: %q; want nothing (not in fstab)", dev)
	}
}

// TestBeforeCommand: the hook sees each command as it arrives; one it drops is not run,
// not recorded, and its session ends without an exit status; without the hook it runs.
func TestBeforeCommand(t *testing.T) {
	op := newOperator(t)
	f := newFleet(t, op)
	v := boot(t, f, "tb-hook-1", nil)
	old := v.BootID()
	cl, err := dial(t, f, v, op)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var seen []string
	f.BeforeCommand(func(vm string, args []string) bool {
		seen = append(seen, vm+": "+strings.Join(args, " "))
		return args[0] == "systemctl"
	})
	sess, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	err = sess.Run("sudo systemctl reboot")
	var missing *ssh.ExitMissingError
	if !errors.As(err, &missing) {
		t.Errorf("dropped reboot: %v, want the session to end without an exit status", err)
	}
	if out, _, _ := run(t, cl, "hostname"); strings.TrimSpace(out) != "tb-hook-1" {
		t.Errorf("hostname after the dropped reboot: %q", out)
	}
	time.Sleep(300 * time.Millisecond)
	if v.BootID() != old {
		t.Error("a dropped reboot rebooted the VM")
	}
	want := []string{"tb-hook-1: systemctl reboot", "tb-hook-1: hostname"}
	if strings.Join(seen, "|") != strings.Join(want, "|") {
		t.Errorf("hook saw %q, want %q", seen, want)
	}
	for _, r := range f.History() {
		if r.Argv[len(r.Argv)-1] == "reboot" {
			t.Errorf("the dropped reboot was recorded: %v", r)
		}
	}
	f.BeforeCommand(nil)
	sess, err = cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	sess.Run("systemctl reboot")
	waitBootID(t, old, 10*time.Second, func() (string, error) { return v.BootID(), nil })
}

// TestKubeadmJoinOverReadyNode: kubeadm join refuses (kubelet-start phase) to join a
// host whose name is a Node that is Ready; a NotReady one is taken over.
func TestKubeadmJoinOverReadyNode(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	op := newOperator(t)
	f := newFleet(t, op)
	f.Cluster = &KubeCluster{CP: cp}
	control := boot(t, f, "tb-vmtest-jcontrol-1", map[string]string{"cookbook-role": "control"})
	worker := boot(t, f, "tb-vmtest-jworker-1", nil)
	if err := cp.AddNode(ctx, lab.NodeSpec{Name: worker.Name}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.RemoveNode(context.Background(), worker.Name) })
	join, errs, code := run(t, redial(t, f, control, op), "sudo kubeadm token create --print-join-command")
	if code != 0 {
		t.Fatalf("token create: exit %d: %s", code, errs)
	}
	wcl := redial(t, f, worker, op)
	want := `error execution phase kubelet-start: a Node with name "tb-vmtest-jworker-1" and status "Ready" already exists in the cluster. You must delete the existing Node or change the name of this new joining Node`
	if _, errs, code := run(t, wcl, "sudo "+strings.TrimSpace(join)); code != 1 || !strings.Contains(errs, want) {
		t.Errorf("join over a Ready Node: exit %d, %s; want exit 1, %q", code, errs, want)
	}
	if worker.Joined() {
		t.Error("the refused join left the VM joined")
	}
	if err := cp.SetNodeNotReady(ctx, worker.Name); err != nil {
		t.Fatal(err)
	}
	if _, errs, code := run(t, wcl, "sudo "+strings.TrimSpace(join)); code != 0 {
		t.Fatalf("join over a NotReady Node: exit %d, %s", code, errs)
	}
	if err := cp.WaitNodeReady(ctx, worker.Name, true, 30*time.Second); err != nil {
		t.Fatal(err)
	}
}
