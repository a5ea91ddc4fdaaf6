package hooks

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
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	xssh "golang.org/x/crypto/ssh"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/dryrun"
	"example.com/cookbook/lab/cloud"
	"example.com/cookbook/lab/vm"
	"example.com/cookbook/ssh"
)

var n1 = Node{Hostname: "tb-worker-7", FQDN: "tb-worker-7.tb.example", Role: "worker", Cluster: "tb", ServerID: "8c1f-42", Address: "127.42.0.7"}

func TestExpand(t *testing.T) {
	argv, on, err := Expand(config.Hook{
		Command: []string{"echo", "{hostname}", "{fqdn}", "{role}", "{cluster}", "{server_id}", "{address}", "--json={\"a\": 1}"},
		On:      "{fqdn}",
	}, n1)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"echo", "tb-worker-7", "tb-worker-7.tb.example", "worker", "tb", "8c1f-42", "127.42.0.7", `--json={"a": 1}`}
	if diff := cmp.Diff(want, argv); diff != "" || on != "tb-worker-7.tb.example" {
		t.Errorf("argv (-want +got):\n%s\non = %q", diff, on)
	}
	if _, _, err := Expand(config.Hook{Command: []string{"echo", "{node}"}}, n1); err == nil || !strings.Contains(err.Error(), "unknown placeholder {node}") {
		t.Errorf("unknown placeholder: %v", err)
	}
	if _, _, err := Expand(config.Hook{}, n1); err == nil {
		t.Error("an empty hook expanded")
	}
	for point, want := range map[string]string{AfterCreate: "hook-after-create-1", AfterJoin: "hook-after-join-1", BeforeDrain: "hook-before-drain-1", BeforeRemove: "hook-before-remove-1", AfterRemove: "hook-after-remove-1"} {
		if got := StepName(point, 1); got != want {
			t.Errorf("StepName(%s) = %q, want %q", point, got, want)
		}
	}
}

// TestLocalHook: placeholders expanded, the environment set, each point.
func TestLocalHook(t *testing.T) {
	dir := t.TempDir()
	r := &Runner{Env: []string{"PATH=" + os.Getenv("PATH"), "KEEP=1"}}
	for _, point := range []string{AfterCreate, AfterJoin, BeforeDrain, BeforeRemove, AfterRemove} {
		out := filepath.Join(dir, point)
		h := config.Hook{Command: []string{"sh", "-c", `printf '%s\n' "$@" "$COOKBOOK_RUN_ID" "$COOKBOOK_CLUSTER" "$COOKBOOK_NODE" "$KEEP" > "$0"`, out, "{fqdn}", "{server_id}", "{address}", "{role}"}}
		if err := r.Run(context.Background(), "run-1", point, h, n1); err != nil {
			t.Fatalf("%s: %v", point, err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		want := "tb-worker-7.tb.example\n8c1f-42\n127.42.0.7\nworker\nrun-1\ntb\ntb-worker-7\n1\n"
		if string(b) != want {
			t.Errorf("%s: hook saw %q, want %q", point, b, want)
		}
	}
}

func TestHookFailureAndTimeout(t *testing.T) {
	r := &Runner{}
	ctx := context.Background()
	// Stderr's last 20 lines are in the error.
	h := config.Hook{Command: []string{"sh", "-c", `for i in $(seq 1 30); do echo "line $i" >&2; done; exit 3`}}
	err := r.Run(ctx, "run-1", AfterRemove, h, n1)
	if err == nil {
		t.Fatal("a failing hook did not fail")
	}
	msg := err.Error()
	if !strings.Contains(msg, "afterRemove hook `sh -c") || !strings.Contains(msg, "exited with status 3") ||
		!strings.Contains(msg, "line 11 | line 12") || !strings.HasSuffix(msg, "line 30") || strings.Contains(msg, "line 10 |") {
		t.Errorf("error = %s", msg)
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("error is not one line: %q", msg)
	}
	// The timeout kills the hook and what it started.
	start := time.Now()
	h = config.Hook{Command: []string{"sh", "-c", "echo waiting >&2; sleep 30 & wait"}, Timeout: config.Duration(300 * time.Millisecond)}
	err = r.Run(ctx, "run-1", BeforeDrain, h, n1)
	if err == nil || !strings.Contains(err.Error(), "killed after its timeout of 300ms: waiting") {
		t.Errorf("timeout error = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the hook ran %s after its timeout of 300ms", d)
	}
	// A program that is not there.
	if err := r.Run(ctx, "run-1", AfterJoin, config.Hook{Command: []string{"/nonexistent/hook"}}, n1); err == nil {
		t.Error("a missing program did not fail")
	}
	// A remote hook without an SSH client.
	if err := r.Run(ctx, "run-1", AfterJoin, config.Hook{Command: []string{"true"}, On: "puppet"}, n1); err == nil || !strings.Contains(err.Error(), "no SSH client") {
		t.Errorf("remote hook without ssh = %v", err)
	}
}

func TestDryRunPrintsTheHook(t *testing.T) {
	var buf bytes.Buffer
	gate := &dryrun.Gate{DryRun: true, Log: slog.New(slog.NewTextHandler(&buf, nil))}
	out := filepath.Join(t.TempDir(), "ran")
	r := &Runner{Gate: gate}
	h := config.Hook{Command: []string{"touch", out, "{fqdn}"}}
	if err := r.Run(context.Background(), "run-1", AfterCreate, h, n1); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a dry run ran the hook: %v", err)
	}
	want := fmt.Sprintf(`msg="DRY-RUN: would run afterCreate hook: touch %s tb-worker-7.tb.example"`, out)
	if !strings.Contains(buf.String(), want) {
		t.Errorf("dry-run log = %s\nwant %s", buf.String(), want)
	}
}

// TestStepsResume: each hook is a step; a resumed run does not run again the hooks that
// finished, and runs again the one that was interrupted or failed.
func TestStepsResume(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	gate := filepath.Join(dir, "gate")
	r := &Runner{}
	hooks := []config.Hook{
		{Command: []string{"sh", "-c", `echo "first {hostname}" >> "$0"`, log}},
		{Command: []string{"sh", "-c", `echo "second {hostname} $COOKBOOK_RUN_ID" >> "$0"; test -e "$1" || { echo "no gate yet" >&2; exit 1; }`, log, gate}},
		{Command: []string{"sh", "-c", `echo "third {server_id}" >> "$0"`, log}},
	}
	serverID := pipeline.Key[string]("server-id")
	steps := pipeline.Steps(
		pipeline.One(pipeline.Step{Name: "create", Do: func(_ context.Context, v *pipeline.Values) error { return serverID.Set(v, "srv-9") }}),
		r.Steps(AfterCreate, hooks, func(v *pipeline.Values) (Node, error) {
			id, err := serverID.Must(v)
			return Node{Hostname: "tb-worker-9", Cluster: "tb", ServerID: id}, err
		}),
	)
	var names []string
	for _, s := range steps {
		names = append(names, s.Name)
	}
	if diff := cmp.Diff([]string{"create", "hook-after-create-1", "hook-after-create-2", "hook-after-create-3"}, names); diff != "" {
		t.Fatalf("step names (-want +got):\n%s", diff)
	}
	store := &state.Store{Dir: dir}
	run := &state.Run{ID: "run-7", Cookbook: "test", StartedAt: time.Now()}
	err := (&pipeline.Runner{Store: store}).Run(context.Background(), run, steps)
	var se *pipeline.StepError
	if !errors.As(err, &se) || se.Step != "hook-after-create-2" || !strings.Contains(err.Error(), "no gate yet") {
		t.Fatalf("first run = %v, want hook 2 failed with its stderr", err)
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	loaded, err := store.Load("run-7")
	if err != nil {
		t.Fatal(err)
	}
	if got := loaded.Step("hook-after-create-2").Description; got != "run afterCreate hook here: sh -c 'echo \"second tb-worker-9 $COOKBOOK_RUN_ID\" >> \"$0\"; test -e \"$1\" || { echo \"no gate yet\" >&2; exit 1; }' "+log+" "+gate {
		t.Errorf("description = %q", got)
	}
	if err := (&pipeline.Runner{Store: store}).Run(context.Background(), loaded, steps); err != nil {
		t.Fatalf("resumed run = %v", err)
	}
	b, _ := os.ReadFile(log)
	want := "first tb-worker-9\nsecond tb-worker-9 run-7\nsecond tb-worker-9 run-7\nthird srv-9\n"
	if string(b) != want {
		t.Errorf("hooks ran:\n%s\nwant:\n%s", b, want)
	}
}

// TestSSHHookOnLabVM: a hook with `on` runs over real SSH on a simulated VM; the VM's
// command record shows it, with the environment passed through env(1).
func TestSSHHookOnLabVM(t *testing.T) {
	t.Setenv("SSH_AUTH_SOCK", "")
	dir := t.TempDir()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := xssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sshPub, _ := xssh.NewPublicKey(pub)
	f := &vm.Fleet{Port: freePort(t), Programs: []string{"puppetserver"}}
	t.Cleanup(f.Close)
	addr := fmt.Sprintf("127.44.%d.%d", 1+os.Getpid()%200, 10)
	lines, err := f.Boot(context.Background(), cloud.Machine{ID: "id-puppet", Name: "tb-puppetserver-1", Address: addr,
		AuthorizedKeys: []string{strings.TrimSpace(string(xssh.MarshalAuthorizedKey(sshPub)))}})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	gate := &dryrun.Gate{Log: slog.New(slog.NewTextHandler(&buf, nil))}
	c, err := ssh.New(ssh.Options{User: "root", Port: f.Port, IdentityFiles: []string{keyPath}, Gate: gate})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Shutdown() })
	c.Pin(addr, []string{strings.Fields(lines[0])[1]})

	r := &Runner{SSH: c}
	h := config.Hook{Command: []string{"puppetserver", "ca", "clean", "--certname", "{fqdn}"}, On: addr}
	if err := r.Run(context.Background(), "run-3", AfterRemove, h, n1); err != nil {
		t.Fatal(err)
	}
	hist := f.History()
	if len(hist) != 1 {
		t.Fatalf("the VM ran %d commands, want 1: %+v", len(hist), hist)
	}
	want := []string{"env", "COOKBOOK_RUN_ID=run-3", "COOKBOOK_CLUSTER=tb", "COOKBOOK_NODE=tb-worker-7",
		"puppetserver", "ca", "clean", "--certname", "tb-worker-7.tb.example"}
	if diff := cmp.Diff(want, hist[0].Argv); diff != "" || hist[0].VM != "tb-puppetserver-1" || hist[0].ExitCode != 0 {
		t.Errorf("VM record %s exit %d (-want +got):\n%s", hist[0].VM, hist[0].ExitCode, diff)
	}
	if !strings.Contains(buf.String(), "run on "+addr+": env COOKBOOK_RUN_ID=run-3") {
		t.Errorf("gate log = %s", buf.String())
	}
	// A failing remote hook fails with the host's stderr.
	err = r.Run(context.Background(), "run-3", AfterRemove, config.Hook{Command: []string{"frobnicate", "{hostname}"}, On: addr}, n1)
	if err == nil || !strings.Contains(err.Error(), "afterRemove hook") || !strings.Contains(err.Error(), "status 127") || !strings.Contains(err.Error(), "frobnicate: command not found") {
		t.Errorf("failing remote hook = %v", err)
	}
	// In a dry run the remote hook is printed, not run.
	gate.DryRun = true
	if err := r.Run(context.Background(), "run-3", AfterRemove, h, n1); err != nil {
		t.Fatal(err)
	}
	if got := len(f.History()); got != 2 {
		t.Errorf("the VM ran %d commands after a dry run, want 2", got)
	}
	if !strings.Contains(buf.String(), "DRY-RUN: would run on "+addr+": env COOKBOOK_RUN_ID=run-3 COOKBOOK_CLUSTER=tb COOKBOOK_NODE=tb-worker-7 puppetserver ca clean --certname tb-worker-7.tb.example") {
		t.Errorf("dry-run log = %s", buf.String())
	}
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
