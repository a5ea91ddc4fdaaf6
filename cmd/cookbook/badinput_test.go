package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"example.com/cookbook/cookbooks/state"
)

// Secrets of the fixtures: no message may echo them.
const (
	fixturePassword = "s3cr3t-fixture-password"
	fixtureToken    = "kube-fixture-token-9d41c7e2"
)

const fixtureClouds = `clouds:
  lab:
    auth:
      auth_url: http://127.0.0.1:1/v3
      username: admin
      password: ` + fixturePassword + `
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
`

const fixtureKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster: {server: "https://127.0.0.1:1"}
users:
- name: admin
  user: {token: ` + fixtureToken + `}
contexts:
- name: lab
  context: {cluster: lab, user: admin}
current-context: lab
`

// fixtureConfig is a valid configuration whose cluster toolsbeta points at the fixture
// clouds.yaml and kubeconfig (CLOUDS and KUBE are replaced by their paths).
const fixtureConfig = `clusters:
  toolsbeta:
    openstack:
      cloud: lab
      cloudsFile: CLOUDS
    kubernetes:
      kubeconfig: KUBE
      context: lab
    domain: toolsbeta.example.org
    controlNodes: [toolsbeta-test-k8s-control-1]
    ssh:
      user: root
      port: 22
    roles:
      worker:
        prefix: toolsbeta-test-k8s-worker
        serverGroup: {name: workers, policy: anti-affinity}
      worker-nfs:
        prefix: toolsbeta-test-k8s-worker-nfs
      control:
        prefix: toolsbeta-test-k8s-control
        controlPlane: true
`

// badWorld is the fixtures of TestCLIBadInput: a home with nothing in it, a clouds.yaml
// and a kubeconfig holding secrets, configurations good and bad, a state dir with one
// finished run (and one failed drain run), and a state dir of broken run files.
type badWorld struct {
	t                   *testing.T
	root, home          string
	clouds, kube        string
	state, brokenState  string
	doneID, failedID    string
	broken              map[string]string // what is wrong with a run file -> its id
	configs             map[string]string // name -> path
	fifo, dir, fileNode string
}

func newBadWorld(t *testing.T) *badWorld {
	t.Helper()
	root := t.TempDir()
	w := &badWorld{t: t, root: root, home: filepath.Join(root, "home"), state: filepath.Join(root, "state"),
		brokenState: filepath.Join(root, "broken-state"), broken: map[string]string{}, configs: map[string]string{}}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, content string) string {
		t.Helper()
		p := filepath.Join(root, name)
		must(os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	must(os.Mkdir(w.home, 0o700))
	w.clouds = write("clouds.yaml", fixtureClouds)
	w.kube = write("kubeconfig", fixtureKubeconfig)
	w.fifo = filepath.Join(root, "fifo")
	must(syscall.Mkfifo(w.fifo, 0o600))
	w.dir = filepath.Join(root, "a-directory")
	must(os.Mkdir(w.dir, 0o700))
	w.fileNode = write("a-file", "not a directory\n")
	write("empty", "")
	write("not-kubeconfig", "token: "+fixtureToken+"\nhello: world\n")
	write("garbage", "\x00\x01{[: "+fixtureToken+"\n")

	good := strings.NewReplacer("CLOUDS", w.clouds, "KUBE", w.kube).Replace(fixtureConfig)
	config := func(name, content string) {
		w.configs[name] = write(name+".yaml", content)
	}
	edit := func(name, old, new string) {
		t.Helper()
		if !strings.Contains(good, old) {
			t.Fatalf("config %s: %q is not in the fixture", name, old)
		}
		config(name, strings.Replace(good, old, new, 1))
	}
	config("good", good)
	edit("no-clouds-file", w.clouds, filepath.Join(root, "missing-clouds.yaml"))
	edit("clouds-fifo", w.clouds, w.fifo)
	edit("clouds-dir", w.clouds, w.dir)
	edit("clouds-not-yaml", w.clouds, filepath.Join(root, "garbage"))
	edit("wrong-cloud", "cloud: lab", "cloud: prod")
	edit("no-kubeconfig", w.kube, filepath.Join(root, "missing-kubeconfig"))
	edit("kubeconfig-dir", w.kube, w.dir)
	edit("kubeconfig-empty", w.kube, filepath.Join(root, "empty"))
	edit("wrong-context", "context: lab", "context: prod")
	edit("env-kubeconfig", "      kubeconfig: "+w.kube+"\n      context: lab\n", "      context: lab\n")
	edit("env-clouds", "      cloudsFile: "+w.clouds+"\n", "")
	// Bad files, each naming its key path.
	edit("unknown-top-key", "clusters:", "clusters:\n  toolsbeta-x: null\nclustrs: {}\nclusterz:")
	edit("unknown-cluster-key", "    domain:", "    domian: x\n    domain:")
	edit("unknown-ssh-key", "      user: root", "      usr: root")
	edit("unknown-role-key", "        prefix: toolsbeta-test-k8s-worker\n", "        prefx: toolsbeta-test-k8s-worker\n")
	edit("unknown-group-key", "policy: anti-affinity", "polcy: anti-affinity")
	edit("wrong-type-port", "port: 22", "port: abc")
	edit("wrong-type-roles", "    roles:\n", "    roles: [worker]\n    rolez:\n")
	edit("wrong-type-control-nodes", "[toolsbeta-test-k8s-control-1]", "toolsbeta-test-k8s-control-1")
	edit("wrong-type-bool", "controlPlane: true", "controlPlane: maybe")
	edit("duplicate-key", "      port: 22", "      port: 22\n      user: admin")
	config("duplicate-cluster", good+"  toolsbeta: {}\n")
	config("second-document", good+"---\nclusters: {}\n")
	edit("missing-ssh-user", "      user: root\n", "")
	edit("missing-cloud", "      cloud: lab\n", "")
	edit("missing-prefix", "        prefix: toolsbeta-test-k8s-worker-nfs\n", "        flavor: g3.cores8\n")
	edit("bad-control-node", "[toolsbeta-test-k8s-control-1]", `["a;b"]`)
	edit("bad-policy", "policy: anti-affinity", "policy: sometimes")
	edit("syntax", "    ssh:\n", "    ssh: [\n")
	edit("huge-value", "user: root", "user: root\n      port: "+strings.Repeat("9", 200_000))
	config("huge-file", good+"# "+strings.Repeat("x", 2<<20)+"\n")
	config("empty-config", "")

	// The main state dir: one finished run and one failed drain run of toolsbeta.
	store := &state.Store{Dir: w.state}
	now := time.Now().Add(-time.Hour)
	end := now.Add(time.Minute)
	w.doneID = state.NewID(now)
	must(store.Save(&state.Run{ID: w.doneID, Cookbook: "cordon", Cluster: "toolsbeta", Args: map[string]string{"cluster-name": "toolsbeta", "hostname": "toolsbeta-test-k8s-worker-1"},
		Status: state.Done, StartedAt: now, EndedAt: &end, Steps: []state.Step{{Name: "toolsbeta-test-k8s-worker-1/cordon", Status: state.Done}}}))
	w.failedID = state.NewID(now.Add(time.Second))
	must(store.Save(&state.Run{ID: w.failedID, Cookbook: "drain", Cluster: "toolsbeta", Args: map[string]string{"cluster-name": "toolsbeta", "hostname-to-drain": "toolsbeta-test-k8s-worker-2"},
		Status: state.Failed, Error: "drain: timed out", StartedAt: now.Add(time.Second), Steps: []state.Step{{Name: "toolsbeta-test-k8s-worker-2/drain", Status: state.Failed}}}))

	// The broken state dir: the finished run again, and a run file broken in each way.
	bstore := &state.Store{Dir: w.brokenState}
	must(bstore.Save(&state.Run{ID: w.doneID, Cookbook: "cordon", Cluster: "toolsbeta", Status: state.Done, StartedAt: now, EndedAt: &end}))
	valid, err := os.ReadFile(store.Path(w.failedID))
	must(err)
	for i, b := range []struct {
		what    string
		content func(id string) string
		mode    os.FileMode
	}{
		{"mode-0644", func(id string) string { return strings.Replace(string(valid), w.failedID, id, 1) }, 0o644},
		{"id-mismatch", func(id string) string { return string(valid) }, 0o600},
		{"hollow", func(id string) string { return `{"schema":1}` }, 0o600},
		{"corrupt", func(id string) string { v := strings.Replace(string(valid), w.failedID, id, 1); return v[:len(v)/2] }, 0o600},
		{"newer-schema", func(id string) string {
			return strings.Replace(strings.Replace(string(valid), w.failedID, id, 1), `"schema": 1`, `"schema": 99`, 1)
		}, 0o600},
		{"unknown-status", func(id string) string {
			return strings.Replace(strings.Replace(string(valid), w.failedID, id, 1), `"status": "failed"`, `"status": "suspended"`, 1)
		}, 0o600},
	} {
		id := state.NewID(now.Add(time.Duration(10+i) * time.Second))
		p := bstore.Path(id)
		must(os.WriteFile(p, []byte(b.content(id)), b.mode))
		must(os.Chmod(p, b.mode))
		w.broken[b.what] = id
	}
	return w
}

// run runs the cookbook binary (this test binary as child) with args as given, in the empty
// home, with env added to a clean environment.
func (w *badWorld) run(args, env []string) result {
	w.t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Dir = w.home
	cmd.Env = []string{"COOKBOOK_TEST_CHILD=1", "HOME=" + w.home, "PATH=" + os.Getenv("PATH"), "LANG=C"}
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		w.t.Fatal(err)
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// badCase is one bad input: the command line (after --config and --state-dir, unless raw),
// the environment, and a substring of the one-line error that names the bad value.
type badCase struct {
	name   string
	config string   // a configuration of badWorld.configs; "good" if empty
	state  string   // --state-dir; the main state dir if empty
	raw    bool     // args are the whole command line: no --config, no --state-dir
	args   []string // the command line
	env    []string // added to the environment
	want   string   // the error line contains this
	skip   string   // a known bug outside this test's area
}

// TestCLIBadInput runs the cookbook binary with bad input of every kind: each exits 2
// with one line on stderr naming the bad value, without panic, without help text, without
// echoing a secret of the fixtures, and without creating or changing a file anywhere in
// the fixtures (the state dirs above all).
func TestCLIBadInput(t *testing.T) {
	w := newBadWorld(t)
	tb := "toolsbeta"
	worker := "toolsbeta-test-k8s-worker-3"
	cases := []badCase{
		// Usage errors of every command.
		{name: "unknown global flag", args: []string{"--bogus", "list"}, want: "unknown flag --bogus"},
		{name: "unknown cookbook", args: []string{"add-k8s-nod"}, want: `"add-k8s-nod" is not a cookbook`},
		{name: "runs unknown flag", args: []string{"runs", "--bogus"}, want: "--bogus"},
		{name: "runs limit not a number", args: []string{"runs", "--limit", "abc"}, want: `--limit: "abc" is not a whole number`},
		{name: "runs limit negative", args: []string{"runs", "--limit", "-1"}, want: "--limit: -1 is negative"},
		{name: "runs limit without value", args: []string{"runs", "--limit"}, want: "limit"},
		{name: "runs extra argument", args: []string{"runs", "everything"}, want: `"everything"`},
		{name: "runs show without id", args: []string{"runs", "show"}, want: "expected a run id"},
		{name: "runs show two ids", args: []string{"runs", "show", "a", "b"}, want: "got 2: a b"},
		{name: "runs show path as id", args: []string{"runs", "show", "../../etc/passwd"}, want: "../../etc/passwd"},
		{name: "runs show unknown id", args: []string{"runs", "show", "20260101-000000-abcdef"}, want: "20260101-000000-abcdef"},
		{name: "resume unknown flag", args: []string{"resume", "--bogus", "20260101-000000-abcdef"}, want: "unknown flag --bogus"},
		{name: "resume without id", args: []string{"resume"}, want: "expected one run id"},
		{name: "resume unknown id", args: []string{"resume", "20260101-000000-abcdef"}, want: "20260101-000000-abcdef"},
		{name: "resume finished run", args: []string{"resume", w.doneID}, want: w.doneID + " is done: nothing to resume"},
		{name: "abandon two ids", args: []string{"abandon", "a", "b"}, want: "got 2: a b"},
		{name: "abandon without id", args: []string{"abandon"}, want: "expected one run id"},
		{name: "abandon unknown flag", args: []string{"abandon", "--bogus", w.failedID}, want: "unknown flag --bogus"},
		{name: "abandon finished run", args: []string{"abandon", w.doneID}, want: w.doneID + " is done: nothing to abandon"},
		{name: "cookbook extra argument", args: []string{"cordon", "--cluster-name", tb, "--hostname", worker, "now"}, want: `unexpected argument "now"`},
		{name: "cookbook unknown flag", args: []string{"cordon", "--cluster-name", tb, "--hostnme", worker}, want: "unknown flag --hostnme"},
		{name: "cookbook flag without value", args: []string{"cordon", "--cluster-name"}, want: "cluster-name"},

		// Cluster names, roles and hostnames.
		{name: "missing cluster-name", args: []string{"list-nodes"}, want: "missing --cluster-name"},
		{name: "empty cluster-name", args: []string{"list-nodes", "--cluster-name", ""}, want: "--cluster-name"},
		{name: "unknown cluster", args: []string{"list-nodes", "--cluster-name", "prod"}, want: `"prod"`},
		{name: "cluster name with semicolon", args: []string{"drain", "--cluster-name", "a;b", "--hostname-to-drain", worker}, want: `"a;b"`},
		{name: "cluster name upper case", args: []string{"cordon", "--cluster-name", "ToolsBeta", "--hostname", worker}, want: "ToolsBeta"},
		{name: "add unknown role", args: []string{"add-k8s-node", "--cluster-name", tb, "--role", "gpu"}, want: `"gpu"`},
		{name: "add missing role", args: []string{"add-k8s-node", "--cluster-name", tb}, want: "missing --role"},
		{name: "remove unknown role", args: []string{"remove-k8s-node", "--cluster-name", tb, "--role", "gpu"}, want: `"gpu"`},
		{name: "list-nodes unknown role", args: []string{"list-nodes", "--cluster-name", tb, "--role", "gpu"}, want: `"gpu"`},
		{name: "roll-reboot unknown role", args: []string{"roll-reboot", "--cluster-name", tb, "--role", "gpu"}, want: `"gpu"`},
		{name: "remove hostname with semicolon", args: []string{"remove-k8s-node", "--cluster-name", tb, "--role", "worker", "--hostname-to-remove", "a;b"}, want: `"a;b"`},
		{name: "remove hostname of another role", args: []string{"remove-k8s-node", "--cluster-name", tb, "--role", "worker", "--hostname-to-remove", "toolsbeta-test-k8s-control-1"}, want: "toolsbeta-test-k8s-control-1 is not a node of role worker"},
		{name: "remove hostname like a flag", args: []string{"remove-k8s-node", "--cluster-name", tb, "--role", "worker", "--hostname-to-remove=-x"}, want: `"-x"`},
		{name: "drain hostname with semicolon", args: []string{"drain", "--cluster-name", tb, "--hostname-to-drain", "a;b"}, want: `"a;b"`},
		{name: "drain hostname like a flag", args: []string{"drain", "--cluster-name", tb, "--hostname-to-drain=-x"}, want: `"-x"`},
		{name: "drain empty hostname", args: []string{"drain", "--cluster-name", tb, "--hostname-to-drain", ""}, want: "--hostname-to-drain"},
		{name: "cordon hostname with dollar", args: []string{"cordon", "--cluster-name", tb, "--hostname", "$(reboot)"}, want: `"$(reboot)"`},
		{name: "cordon hostname too long", args: []string{"cordon", "--cluster-name", tb, "--hostname", strings.Repeat("a", 64)}, want: strings.Repeat("a", 20)},
		{name: "uncordon hostname with space", args: []string{"uncordon", "--cluster-name", tb, "--hostname", "a b"}, want: `"a b"`},
		{name: "uncordon missing hostname", args: []string{"uncordon", "--cluster-name", tb}, want: "missing --hostname"},
		{name: "roll-reboot no selection", args: []string{"roll-reboot", "--cluster-name", tb}, want: "give exactly one of"},
		{name: "roll-reboot two selections", args: []string{"roll-reboot", "--cluster-name", tb, "--all", "--role", "worker"}, want: "(got 2)"},
		{name: "roll-reboot hostname-list twice", args: []string{"roll-reboot", "--cluster-name", tb, "--hostname-list", worker + ",toolsbeta-test-k8s-worker-4," + worker}, want: "--hostname-list: " + worker + " is listed twice"},
		{name: "roll-reboot hostname-list twice with spaces", args: []string{"roll-reboot", "--cluster-name", tb, "--hostname-list", worker + ", " + worker}, want: worker + " is listed twice"},
		{name: "roll-reboot hostname-list semicolon", args: []string{"roll-reboot", "--cluster-name", tb, "--hostname-list", worker + ",a;b"}, want: `"a;b"`},
		{name: "roll-reboot hostname-list twice with spaces only", args: []string{"roll-reboot", "--cluster-name", tb, "--hostname-list", worker + " toolsbeta-test-k8s-worker-4 " + worker}, want: worker + " is listed twice"},
		{name: "roll-reboot hostname-list empty item", args: []string{"roll-reboot", "--cluster-name", tb, "--hostname-list", worker + ",,x"}, want: "--hostname-list"},

		// Durations and numbers.
		{name: "add timeout zero", args: []string{"add-k8s-node", "--cluster-name", tb, "--role", "worker", "--timeout", "0s"}, want: "--timeout: 0s is not a positive duration (expected one such as 20m)"},
		{name: "add timeout negative", args: []string{"add-k8s-node", "--cluster-name", tb, "--role", "worker", "--timeout", "-1m"}, want: "--timeout: -1m0s is not a positive duration"},
		{name: "add timeout not a duration", args: []string{"add-k8s-node", "--cluster-name", tb, "--role", "worker", "--timeout", "5"}, want: `--timeout: "5" is not a duration`},
		{name: "remove timeout zero", args: []string{"remove-k8s-node", "--cluster-name", tb, "--role", "worker", "--timeout", "0"}, want: "--timeout: 0s is not a positive duration (expected one such as 10m)"},
		{name: "remove drain-timeout negative", args: []string{"remove-k8s-node", "--cluster-name", tb, "--role", "worker", "--drain-timeout", "-10m"}, want: "--drain-timeout: -10m0s is not a positive duration"},
		{name: "remove grace-period negative", args: []string{"remove-k8s-node", "--cluster-name", tb, "--role", "worker", "--grace-period", "-5"}, want: "--grace-period: -5 is negative"},
		{name: "drain drain-timeout zero", args: []string{"drain", "--cluster-name", tb, "--hostname-to-drain", worker, "--drain-timeout", "0s"}, want: "--drain-timeout: 0s is not a positive duration (expected one such as 10m)"},
		{name: "drain drain-timeout not a duration", args: []string{"drain", "--cluster-name", tb, "--hostname-to-drain", worker, "--drain-timeout", "ten"}, want: `"ten"`},
		{name: "reboot-stuck-workers not-ready-for zero", args: []string{"reboot-stuck-workers", "--cluster-name", tb, "--not-ready-for", "0s"}, want: "--not-ready-for: 0s is not a positive duration (expected one such as 10m)"},
		{name: "reboot-stuck-workers max-unavailable zero", args: []string{"reboot-stuck-workers", "--cluster-name", tb, "--max-unavailable", "0"}, want: "--max-unavailable: 0 is not a positive number"},
		{name: "reboot-stuck-workers query without prometheus", args: []string{"reboot-stuck-workers", "--cluster-name", tb, "--query", "up"}, want: "--query: cluster toolsbeta has no prometheus url in the configuration"},
		{name: "drain skip-wait-for-delete-timeout negative", args: []string{"drain", "--cluster-name", tb, "--hostname-to-drain", worker, "--skip-wait-for-delete-timeout", "-1m"}, want: "--skip-wait-for-delete-timeout: -1m0s is negative (expected a duration of 0 or more, such as 5m)"},
		{name: "drain grace-period minus two", args: []string{"drain", "--cluster-name", tb, "--hostname-to-drain", worker, "--grace-period", "-2"}, want: "--grace-period: -2 is negative"},
		{name: "drain grace-period not a number", args: []string{"drain", "--cluster-name", tb, "--hostname-to-drain", worker, "--grace-period", "1.5"}, want: "1.5"},
		{name: "roll-reboot settle negative", args: []string{"roll-reboot", "--cluster-name", tb, "--all", "--settle", "-5s"}, want: "--settle: -5s is negative (expected a duration of 0 or more, such as 30s)"},
		{name: "roll-reboot reboot-timeout zero", args: []string{"roll-reboot", "--cluster-name", tb, "--all", "--reboot-timeout", "0s"}, want: "--reboot-timeout: 0s is not a positive duration"},
		{name: "roll-reboot health-window zero", args: []string{"roll-reboot", "--cluster-name", tb, "--all", "--health-window", "0s"}, want: "--health-window: 0s is not a positive duration (expected one such as 2s)"},
		{name: "roll-reboot reboot-timeout negative", args: []string{"roll-reboot", "--cluster-name", tb, "--all", "--reboot-timeout", "-1h"}, want: "--reboot-timeout: -1h0m0s"},
		{name: "roll-reboot drain-timeout zero", args: []string{"roll-reboot", "--cluster-name", tb, "--all", "--drain-timeout", "0s"}, want: "--drain-timeout: 0s"},
		{name: "roll-reboot max-unavailable zero", args: []string{"roll-reboot", "--cluster-name", tb, "--all", "--max-unavailable", "0"}, want: "--max-unavailable: 0 is not a positive number"},
		{name: "roll-reboot max-unavailable negative", args: []string{"roll-reboot", "--cluster-name", tb, "--all", "--max-unavailable", "-3"}, want: "--max-unavailable: -3"},
		{name: "roll-reboot max-unavailable not a number", args: []string{"roll-reboot", "--cluster-name", tb, "--all", "--max-unavailable", "two"}, want: `"two"`},

		// What the configuration names, checked before a run exists.
		{name: "list-nodes clouds file missing", config: "no-clouds-file", args: []string{"list-nodes", "--cluster-name", tb}, want: "openstack.cloudsFile " + filepath.Join(w.root, "missing-clouds.yaml") + ": no such file"},
		{name: "add clouds file missing", config: "no-clouds-file", args: []string{"add-k8s-node", "--cluster-name", tb, "--role", "worker"}, want: "missing-clouds.yaml: no such file"},
		{name: "remove clouds file missing", config: "no-clouds-file", args: []string{"remove-k8s-node", "--cluster-name", tb, "--role", "worker", "--yes"}, want: "missing-clouds.yaml: no such file"},
		{name: "roll-reboot clouds file missing", config: "no-clouds-file", args: []string{"roll-reboot", "--cluster-name", tb, "--all"}, want: "missing-clouds.yaml: no such file"},
		{name: "dry-run add clouds file missing", config: "no-clouds-file", args: []string{"--dry-run", "add-k8s-node", "--cluster-name", tb, "--role", "worker"}, want: "missing-clouds.yaml: no such file"},
		{name: "clouds file is a FIFO", config: "clouds-fifo", args: []string{"list-nodes", "--cluster-name", tb}, want: w.fifo + ": is a named pipe (FIFO)"},
		{name: "clouds file is a directory", config: "clouds-dir", args: []string{"add-k8s-node", "--cluster-name", tb, "--role", "worker"}, want: w.dir + ": is a directory"},
		{name: "clouds file not YAML", config: "clouds-not-yaml", args: []string{"list-nodes", "--cluster-name", tb}, want: "garbage"},
		{name: "cloud not in clouds.yaml", config: "wrong-cloud", args: []string{"add-k8s-node", "--cluster-name", tb, "--role", "worker"}, want: `openstack.cloud "prod": not in clouds.yaml ` + w.clouds + " (clouds there: lab)"},
		{name: "clouds.yaml from OS_CLIENT_CONFIG_FILE missing", config: "env-clouds", env: []string{"OS_CLIENT_CONFIG_FILE=" + filepath.Join(w.root, "nowhere.yaml")}, args: []string{"list-nodes", "--cluster-name", tb}, want: "$OS_CLIENT_CONFIG_FILE " + filepath.Join(w.root, "nowhere.yaml")},
		{name: "no clouds.yaml anywhere", config: "env-clouds", args: []string{"list-nodes", "--cluster-name", tb}, want: "no clouds.yaml in"},
		{name: "drain kubeconfig missing", config: "no-kubeconfig", args: []string{"drain", "--cluster-name", tb, "--hostname-to-drain", worker}, want: "kubernetes.kubeconfig " + filepath.Join(w.root, "missing-kubeconfig") + ": no such file"},
		{name: "cordon kubeconfig missing", config: "no-kubeconfig", args: []string{"cordon", "--cluster-name", tb, "--hostname", worker}, want: "missing-kubeconfig: no such file"},
		{name: "uncordon kubeconfig missing", config: "no-kubeconfig", args: []string{"uncordon", "--cluster-name", tb, "--hostname", worker}, want: "missing-kubeconfig: no such file"},
		{name: "list-nodes kubeconfig missing", config: "no-kubeconfig", args: []string{"list-nodes", "--cluster-name", tb}, want: "missing-kubeconfig: no such file"},
		{name: "kubeconfig is a directory", config: "kubeconfig-dir", args: []string{"drain", "--cluster-name", tb, "--hostname-to-drain", worker}, want: w.dir},
		{name: "kubeconfig empty", config: "kubeconfig-empty", args: []string{"cordon", "--cluster-name", tb, "--hostname", worker}, want: filepath.Join(w.root, "empty") + ": no contexts"},
		{name: "unknown context", config: "wrong-context", args: []string{"drain", "--cluster-name", tb, "--hostname-to-drain", worker}, want: `kubernetes.context "prod": not in kubeconfig ` + w.kube + " (contexts there: lab)"},
		{name: "roll-reboot unknown context", config: "wrong-context", args: []string{"roll-reboot", "--cluster-name", tb, "--all"}, want: `kubernetes.context "prod"`},
		{name: "resume with kubeconfig missing", config: "no-kubeconfig", args: []string{"resume", w.failedID}, want: "missing-kubeconfig: no such file"},
		{name: "abandon with unknown context", config: "wrong-context", args: []string{"abandon", w.failedID}, want: `kubernetes.context "prod"`},
		{name: "dry-run resume with kubeconfig missing", config: "no-kubeconfig", args: []string{"--dry-run", "resume", w.failedID}, want: "missing-kubeconfig"},
		{name: "unfinished run refused", args: []string{"drain", "--cluster-name", tb, "--hostname-to-drain", worker}, want: "unfinished drain run " + w.failedID},

		// Environment.
		{name: "COOKBOOK_CONFIG missing", raw: true, env: []string{"COOKBOOK_CONFIG=" + filepath.Join(w.root, "nope.yaml")}, args: []string{"--state-dir", w.state, "list-nodes", "--cluster-name", tb}, want: filepath.Join(w.root, "nope.yaml")},
		{name: "COOKBOOK_CONFIG a directory", raw: true, env: []string{"COOKBOOK_CONFIG=" + w.dir}, args: []string{"--state-dir", w.state, "list-nodes", "--cluster-name", tb}, want: w.dir},
		{name: "no configuration anywhere", raw: true, args: []string{"--state-dir", w.state, "list-nodes", "--cluster-name", tb}, want: "config"},
		{name: "KUBECONFIG empty file", config: "env-kubeconfig", env: []string{"KUBECONFIG=" + filepath.Join(w.root, "empty")}, args: []string{"drain", "--cluster-name", tb, "--hostname-to-drain", worker}, want: "$KUBECONFIG " + filepath.Join(w.root, "empty") + ": no contexts"},
		{name: "KUBECONFIG not a kubeconfig", config: "env-kubeconfig", env: []string{"KUBECONFIG=" + filepath.Join(w.root, "not-kubeconfig")}, args: []string{"cordon", "--cluster-name", tb, "--hostname", worker}, want: "not-kubeconfig: no contexts"},
		{name: "KUBECONFIG garbage", config: "env-kubeconfig", env: []string{"KUBECONFIG=" + filepath.Join(w.root, "garbage")}, args: []string{"list-nodes", "--cluster-name", tb}, want: "garbage: not a kubeconfig"},
		{name: "KUBECONFIG missing file", config: "env-kubeconfig", env: []string{"KUBECONFIG=" + filepath.Join(w.root, "nope")}, args: []string{"uncordon", "--cluster-name", tb, "--hostname", worker}, want: "$KUBECONFIG " + filepath.Join(w.root, "nope") + ": no such file"},
		{name: "KUBECONFIG a FIFO", config: "env-kubeconfig", env: []string{"KUBECONFIG=" + w.fifo}, args: []string{"drain", "--cluster-name", tb, "--hostname-to-drain", worker}, want: w.fifo},
		{name: "XDG_STATE_HOME a file: runs", raw: true, env: []string{"XDG_STATE_HOME=" + w.fileNode}, args: []string{"--config", w.configs["good"], "runs"}, want: w.fileNode},
		{name: "XDG_STATE_HOME a file: cookbook", raw: true, env: []string{"XDG_STATE_HOME=" + w.fileNode}, args: []string{"--config", w.configs["good"], "cordon", "--cluster-name", tb, "--hostname", worker}, want: w.fileNode},

		// State directories.
		{name: "state-dir empty: runs", state: "-", args: []string{"--state-dir", "", "runs"}, want: "--state-dir is empty"},
		{name: "state-dir empty: cookbook", state: "-", args: []string{"--state-dir", "", "cordon", "--cluster-name", tb, "--hostname", worker}, want: "--state-dir is empty"},
		{name: "state-dir a file: runs show", state: w.fileNode, args: []string{"runs", "show", w.doneID}, want: w.fileNode + ": is a regular file"},
		{name: "state-dir a file: abandon", state: w.fileNode, args: []string{"abandon", w.failedID}, want: w.fileNode},
		{name: "state-dir under a file: resume", state: filepath.Join(w.fileNode, "state"), args: []string{"resume", w.failedID}, want: filepath.Join(w.fileNode, "state")},
		{name: "state-dir under a file: cookbook", state: filepath.Join(w.fileNode, "state"), args: []string{"drain", "--cluster-name", tb, "--hostname-to-drain", worker}, want: filepath.Join(w.fileNode, "state")},
		{name: "state-dir a FIFO: runs", state: w.fifo, args: []string{"runs"}, want: w.fifo},

		// Configuration files.
		{name: "config unknown top-level key", config: "unknown-top-key", args: []string{"list-nodes", "--cluster-name", tb}, want: "clustrs: unknown key"},
		{name: "config unknown cluster key", config: "unknown-cluster-key", args: []string{"list-nodes", "--cluster-name", tb}, want: "clusters.toolsbeta.domian: unknown key"},
		{name: "config unknown ssh key", config: "unknown-ssh-key", args: []string{"drain", "--cluster-name", tb, "--hostname-to-drain", worker}, want: "clusters.toolsbeta.ssh.usr: unknown key"},
		{name: "config unknown role key", config: "unknown-role-key", args: []string{"add-k8s-node", "--cluster-name", tb, "--role", "worker"}, want: "clusters.toolsbeta.roles.worker.prefx: unknown key"},
		{name: "config unknown server group key", config: "unknown-group-key", args: []string{"add-k8s-node", "--cluster-name", tb, "--role", "worker"}, want: "serverGroup.polcy: unknown key"},
		{name: "config wrong type port", config: "wrong-type-port", args: []string{"list-nodes", "--cluster-name", tb}, want: `ssh.port: "abc" is not a whole number`},
		{name: "config wrong type roles", config: "wrong-type-roles", args: []string{"list-nodes", "--cluster-name", tb}, want: "clusters.toolsbeta.roles"},
		{name: "config wrong type controlNodes", config: "wrong-type-control-nodes", args: []string{"list-nodes", "--cluster-name", tb}, want: "controlNodes"},
		{name: "config wrong type boolean", config: "wrong-type-bool", args: []string{"list-nodes", "--cluster-name", tb}, want: `controlPlane: "maybe" is not true or false`},
		{name: "config duplicate key", config: "duplicate-key", args: []string{"list-nodes", "--cluster-name", tb}, want: "clusters.toolsbeta.ssh.user: duplicate key"},
		{name: "config duplicate cluster", config: "duplicate-cluster", args: []string{"list-nodes", "--cluster-name", tb}, want: "clusters.toolsbeta: duplicate key"},
		{name: "config second document", config: "second-document", args: []string{"list-nodes", "--cluster-name", tb}, want: "---"},
		{name: "config missing ssh.user", config: "missing-ssh-user", args: []string{"cordon", "--cluster-name", tb, "--hostname", worker}, want: "clusters.toolsbeta.ssh.user: required"},
		{name: "config missing openstack.cloud", config: "missing-cloud", args: []string{"list-nodes", "--cluster-name", tb}, want: "clusters.toolsbeta.openstack.cloud: required"},
		{name: "config missing role prefix", config: "missing-prefix", args: []string{"list-nodes", "--cluster-name", tb}, want: "roles.worker-nfs.prefix: required"},
		{name: "config bad control node", config: "bad-control-node", args: []string{"list-nodes", "--cluster-name", tb}, want: "controlNodes[0]"},
		{name: "config bad policy", config: "bad-policy", args: []string{"list-nodes", "--cluster-name", tb}, want: `"sometimes"`},
		{name: "config syntax error", config: "syntax", args: []string{"list-nodes", "--cluster-name", tb}, want: "line "},
		{name: "config huge value", config: "huge-value", args: []string{"list-nodes", "--cluster-name", tb}, want: "ssh.port"},
		{name: "config 2 MiB file", config: "huge-file", args: []string{"list-nodes", "--cluster-name", tb}, want: "MiB"},
		{name: "config empty file", config: "empty-config", args: []string{"list-nodes", "--cluster-name", tb}, want: "empty-config.yaml"},
		{name: "config a FIFO", raw: true, args: []string{"--config", w.fifo, "--state-dir", w.state, "list-nodes", "--cluster-name", tb}, want: w.fifo},
		{name: "config a directory", raw: true, args: []string{"--config", w.dir, "--state-dir", w.state, "drain", "--cluster-name", tb, "--hostname-to-drain", worker}, want: w.dir},
		{name: "config missing", raw: true, args: []string{"--config", filepath.Join(w.root, "nope.yaml"), "--state-dir", w.state, "cordon", "--cluster-name", tb, "--hostname", worker}, want: filepath.Join(w.root, "nope.yaml")},
		{name: "config empty path", raw: true, args: []string{"--config", "", "--state-dir", w.state, "cordon", "--cluster-name", tb, "--hostname", worker}, want: "config"},
		{name: "config is the clouds.yaml", raw: true, args: []string{"--config", w.clouds, "--state-dir", w.state, "list-nodes", "--cluster-name", tb}, want: "clouds: unknown key"},
		{name: "config is the kubeconfig", raw: true, args: []string{"--config", w.kube, "--state-dir", w.state, "list-nodes", "--cluster-name", tb}, want: "unknown key"},
	}
	// Broken run files, for each command that reads one.
	for _, what := range []string{"mode-0644", "id-mismatch", "hollow", "corrupt", "newer-schema", "unknown-status"} {
		id := w.broken[what]
		for _, cmd := range [][]string{{"resume", id}, {"abandon", id}, {"runs", "show", id}} {
			cases = append(cases, badCase{name: "run file " + what + ": " + cmd[0], state: w.brokenState, args: cmd, want: id + ".json"})
		}
	}
	if len(cases) < 80 {
		t.Fatalf("%d cases, want at least 80", len(cases))
	}
	t.Logf("%d bad-input cases", len(cases))

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.skip != "" {
				t.Skip("known: " + tc.skip)
			}
			args := tc.args
			if !tc.raw {
				config := w.configs["good"]
				if tc.config != "" {
					config = w.configs[tc.config]
					if config == "" {
						t.Fatalf("no config %q", tc.config)
					}
				}
				head := []string{"--config", config}
				switch tc.state {
				case "":
					head = append(head, "--state-dir", w.state)
				case "-": // the case gives its own
				default:
					head = append(head, "--state-dir", tc.state)
				}
				args = append(head, args...)
			}
			before := snapshot(t, w.root)
			r := w.run(args, tc.env)
			after := snapshot(t, w.root)
			all := r.stdout + r.stderr
			if r.code != 2 {
				t.Errorf("exit code %d, want 2", r.code)
			}
			line := strings.TrimSuffix(r.stderr, "\n")
			if line == "" || strings.Contains(line, "\n") {
				t.Errorf("want exactly one line on stderr, got:\n%s", r.stderr)
			}
			if !strings.Contains(line, tc.want) {
				t.Errorf("the error does not name the bad value %q:\n%s", tc.want, r.stderr)
			}
			for _, bad := range []string{"Incorrect Usage", "USAGE:", "panic:", "goroutine ", fixturePassword, fixtureToken} {
				if strings.Contains(all, bad) {
					t.Errorf("output contains %q:\nstdout:\n%s\nstderr:\n%s", bad, r.stdout, r.stderr)
				}
			}
			sameFiles(t, strings.Join(tc.args, " "), before, after)
			if t.Failed() {
				t.Logf("args: %q\nstdout:\n%s", args, r.stdout)
			}
		})
	}
}

// TestCLIBadInputUnreachableCluster: an API server that does not answer is not bad input
// (exit 1), but a new run that failed before its first step leaves no run file and no
// log: the message names what could not be reached, `cookbook runs` shows nothing, and
// the next attempt is not refused as "unfinished".
func TestCLIBadInputUnreachableCluster(t *testing.T) {
	w := newBadWorld(t)
	stateDir := filepath.Join(w.root, "fresh-state")
	args := []string{"--config", w.configs["good"], "--state-dir", stateDir, "drain", "--cluster-name", "toolsbeta", "--hostname-to-drain", "toolsbeta-test-k8s-worker-3"}
	for attempt := 1; attempt <= 2; attempt++ {
		r := w.run(args, nil)
		if r.code != 1 {
			t.Fatalf("attempt %d: exit code %d, want 1\n%s", attempt, r.code, r.stderr)
		}
		if want := "could not reach the Kubernetes API of cluster toolsbeta at 127.0.0.1:1"; !strings.Contains(r.stderr, want) {
			t.Errorf("attempt %d: stderr lacks %q:\n%s", attempt, want, r.stderr)
		}
		if strings.Contains(r.stderr, "unfinished") || strings.Contains(r.stderr, "cookbook resume") || strings.Contains(r.stderr, fixtureToken) {
			t.Errorf("attempt %d: stderr:\n%s", attempt, r.stderr)
		}
		if files, _ := filepath.Glob(filepath.Join(stateDir, "runs", "*")); len(files) != 0 {
			t.Errorf("attempt %d left %v", attempt, files)
		}
	}
	r := w.run([]string{"--config", w.configs["good"], "--state-dir", stateDir, "runs"}, nil)
	if r.code != 0 || strings.Count(strings.TrimSpace(r.stdout), "\n") != 0 {
		t.Errorf("runs after the failed attempts: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestInterruptBeforeAnythingIsRecorded: a cluster whose API server accepts connections
// and never answers holds the first reads; SIGINT then ends the process at once (130),
// with nothing recorded.
func TestInterruptBeforeAnythingIsRecorded(t *testing.T) {
	w := newBadWorld(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	kube := filepath.Join(w.root, "silent-kubeconfig")
	data := strings.Replace(fixtureKubeconfig, "https://127.0.0.1:1", "https://"+ln.Addr().String(), 1)
	if err := os.WriteFile(kube, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _ := os.ReadFile(w.configs["good"])
	silent := filepath.Join(w.root, "silent.yaml")
	if err := os.WriteFile(silent, []byte(strings.ReplaceAll(string(cfg), w.kube, kube)), 0o600); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(w.root, "interrupt-state")
	cmd := exec.Command(os.Args[0], "--config", silent, "--state-dir", stateDir, "drain", "--cluster-name", "toolsbeta", "--hostname-to-drain", "toolsbeta-test-k8s-worker-3")
	cmd.Env = []string{"COOKBOOK_TEST_CHILD=1", "HOME=" + w.home, "PATH=" + os.Getenv("PATH")}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond) // connected, waiting for an answer
	start := time.Now()
	cmd.Process.Signal(os.Interrupt)
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
		t.Fatalf("exit %v, want 130\n%s", err, errb.String())
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s to stop after SIGINT", d)
	}
	if !strings.Contains(errb.String(), "nothing was recorded") {
		t.Errorf("stderr:\n%s", errb.String())
	}
	// The cluster's lock file stays (a flock file is not removed on unlock: removing it
	// would race with the next run's open); no run file or log does.
	if files, _ := filepath.Glob(filepath.Join(stateDir, "runs", "*")); len(files) != 0 {
		t.Errorf("left %v", files)
	}
}
