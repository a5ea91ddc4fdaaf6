package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestLoadExample(t *testing.T) {
	c, err := Load("../testdata/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cl, err := c.Cluster("toolsbeta")
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"worker", "worker-nfs", "control", "ingress"} {
		if _, err := cl.Role(role); err != nil {
			t.Errorf("role %s: %v", role, err)
		}
	}
	nfs, _ := cl.Role("worker-nfs")
	if nfs.Labels["toolforge.org/nfs-mounted"] != "true" || nfs.Labels["kubernetes.wmcloud.org/nfs-mounted"] != "true" {
		t.Errorf("worker-nfs labels = %v", nfs.Labels)
	}
	if role, _, ok := cl.RoleOf("toolsbeta-test-k8s-worker-nfs-3"); !ok || role != "worker-nfs" {
		t.Errorf("RoleOf(worker-nfs-3) = %q, %v", role, ok)
	}
	if role, _, ok := cl.RoleOf("toolsbeta-test-k8s-worker-12"); !ok || role != "worker" {
		t.Errorf("RoleOf(worker-12) = %q, %v", role, ok)
	}
	if _, _, ok := cl.RoleOf("toolsbeta-test-k8s-worker-nfs"); ok {
		t.Error("RoleOf matched a name without a number")
	}
	if got := cl.FQDN("toolsbeta-test-k8s-worker-1"); got != "toolsbeta-test-k8s-worker-1.toolsbeta.eqiad1.wikimedia.cloud" {
		t.Errorf("FQDN = %q", got)
	}
	if name, r, err := cl.RoleNamed("worker_nfs"); err != nil || name != "worker-nfs" || r != nfs {
		t.Errorf("RoleNamed(worker_nfs) = %q, %v, %v; want the role worker-nfs", name, r, err)
	}
	if _, err := cl.Role("worker_nf"); err == nil || !strings.Contains(err.Error(), "worker-nfs (worker_nfs)") {
		t.Errorf("unknown role error = %v, want it to list worker-nfs (worker_nfs)", err)
	}
	if d := cl.Drain; d.Force == nil || !*d.Force || d.SkipWaitForDeleteTimeout == nil || d.SkipWaitForDeleteTimeout.D() != 5*time.Minute {
		t.Errorf("drain defaults = %+v", d)
	}
	if _, err := c.Cluster("tools"); err == nil || !strings.Contains(err.Error(), "known: toolsbeta") {
		t.Errorf("unknown cluster error = %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	const good = `
clusters:
  toolsbeta:
    openstack: {cloud: c}
    ssh: {user: root}
    roles:
      worker: {prefix: toolsbeta-test-k8s-worker}
`
	tests := []struct {
		name    string
		yaml    string
		wantErr string
	}{
		{name: "valid", yaml: good},
		{name: "missing prefix", yaml: strings.Replace(good, "{prefix: toolsbeta-test-k8s-worker}", "{flavor: x}", 1),
			wantErr: "clusters.toolsbeta.roles.worker.prefix: required"},
		{name: "unknown key", yaml: strings.Replace(good, "{prefix:", "{prefx: a, prefix:", 1),
			wantErr: `clusters.toolsbeta.roles.worker.prefx: unknown key (did you mean "prefix"?)`},
		{name: "bad policy", yaml: strings.Replace(good, "{prefix: toolsbeta-test-k8s-worker}", "{prefix: w, serverGroup: {policy: spread}}", 1),
			wantErr: `clusters.toolsbeta.roles.worker.serverGroup.policy: "spread" is not one of`},
		{name: "bad hostname", yaml: strings.Replace(good, "ssh:", "controlNodes: [Bad_Host]\n    ssh:", 1),
			wantErr: `clusters.toolsbeta.controlNodes[0]: "Bad_Host" is not a valid hostname`},
		{name: "no cloud", yaml: strings.Replace(good, "{cloud: c}", "{}", 1),
			wantErr: "clusters.toolsbeta.openstack.cloud: required"},
		{name: "lock", yaml: strings.Replace(good, "ssh:", "lock: {kind: lease, name: ops.lock, namespace: cookbook, duration: 30s, renewEvery: 2s}\n    records: {keep: 20}\n    ssh:", 1)},
		{name: "bad lock kind", yaml: strings.Replace(good, "ssh:", "lock: {kind: etcd}\n    ssh:", 1),
			wantErr: `clusters.toolsbeta.lock.kind: "etcd" is not one of lease, file`},
		{name: "bad lock duration", yaml: strings.Replace(good, "ssh:", "lock: {duration: 1m500ms}\n    ssh:", 1),
			wantErr: `clusters.toolsbeta.lock.duration: "1m500ms" is not a whole number of seconds`},
		{name: "lock renewal too slow", yaml: strings.Replace(good, "ssh:", "lock: {duration: 10s, renewEvery: 6s}\n    ssh:", 1),
			wantErr: `clusters.toolsbeta.lock.renewEvery: 6s is more than half of lock.duration 10s`},
		{name: "lock unknown key", yaml: strings.Replace(good, "ssh:", "lock: {kind: file, ttl: 5s}\n    ssh:", 1),
			wantErr: `clusters.toolsbeta.lock.ttl: unknown key`},
		{name: "bad keep", yaml: strings.Replace(good, "ssh:", "records: {keep: 0}\n    ssh:", 1),
			wantErr: `clusters.toolsbeta.records.keep: 0 is not a positive number`},
		{name: "drain", yaml: strings.Replace(good, "ssh:", "drain: {force: true, deleteEmptyDirData: true, gracePeriod: 30, timeout: 20m, skipWaitForDeleteTimeout: 0}\n    ssh:", 1)},
		{name: "drain bad grace period", yaml: strings.Replace(good, "ssh:", "drain: {gracePeriod: -5}\n    ssh:", 1),
			wantErr: `clusters.toolsbeta.drain.gracePeriod: -5 is negative (expected seconds, 0 or more, or -1 for each pod's own)`},
		{name: "drain zero timeout", yaml: strings.Replace(good, "ssh:", "drain: {timeout: 0}\n    ssh:", 1),
			wantErr: `clusters.toolsbeta.drain.timeout: 0s is not a positive duration`},
		{name: "drain negative skip", yaml: strings.Replace(good, "ssh:", "drain: {skipWaitForDeleteTimeout: -1m}\n    ssh:", 1),
			wantErr: `clusters.toolsbeta.drain.skipWaitForDeleteTimeout: -1m0s is negative`},
		{name: "drain bad duration", yaml: strings.Replace(good, "ssh:", "drain: {timeout: ten}\n    ssh:", 1),
			wantErr: `clusters.toolsbeta.drain.timeout: "ten" is not a duration`},
		{name: "drain bad force", yaml: strings.Replace(good, "ssh:", "drain: {force: maybe}\n    ssh:", 1),
			wantErr: `clusters.toolsbeta.drain.force: "maybe" is not true or false`},
		{name: "drain unknown key", yaml: strings.Replace(good, "ssh:", "drain: {deleteLocalData: true}\n    ssh:", 1),
			wantErr: `clusters.toolsbeta.drain.deleteLocalData: unknown key`},
		{name: "aliases", yaml: strings.Replace(good, "{prefix: toolsbeta-test-k8s-worker}", "{prefix: toolsbeta-test-k8s-worker, aliases: [k8s_worker, wrk]}", 1)},
		{name: "alias of another role", yaml: strings.Replace(good, "{prefix: toolsbeta-test-k8s-worker}", "{prefix: toolsbeta-test-k8s-worker}\n      ingress: {prefix: toolsbeta-test-k8s-ingress, aliases: [worker]}", 1),
			wantErr: `clusters.toolsbeta.roles.ingress.aliases[0]: "worker" already names role worker`},
		{name: "bad alias", yaml: strings.Replace(good, "{prefix: toolsbeta-test-k8s-worker}", "{prefix: toolsbeta-test-k8s-worker, aliases: [Worker NFS]}", 1),
			wantErr: `clusters.toolsbeta.roles.worker.aliases[0]: "Worker NFS" is not a role name (expected lowercase letters, digits, - and _)`},
		{name: "not yaml", yaml: "clusters: [", wantErr: "config test.yaml:"},
		{name: "empty", yaml: "", wantErr: "clusters: at least one cluster is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("test.yaml", []byte(tt.yaml))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), "test.yaml") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

// TestLockKindDefault: lease where the cluster has a kubernetes section (an API to hold
// the Lease in), file where it has none, the configured kind otherwise.
func TestLockKindDefault(t *testing.T) {
	const base = "clusters:\n  c:\n    openstack: {cloud: c}\n    ssh: {user: root}\n    roles: {worker: {prefix: w}}\n"
	tests := []struct {
		name, extra, want string
	}{
		{"no kubernetes section", "", LockFile},
		{"kubernetes section", "    kubernetes: {kubeconfig: /k}\n", LockLease},
		{"empty kubernetes section", "    kubernetes: {}\n", LockLease},
		{"file configured", "    kubernetes: {kubeconfig: /k}\n    lock: {kind: file}\n", LockFile},
		{"lease configured", "    lock: {kind: lease}\n", LockLease},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("t.yaml", []byte(base+tt.extra))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Clusters["c"].LockKind(); got != tt.want {
				t.Errorf("LockKind = %s, want %s", got, tt.want)
			}
		})
	}
	c, _ := Parse("t.yaml", []byte(base))
	cl := c.Clusters["c"]
	ns, name := cl.LockName()
	d, r := cl.LockTimes()
	if ns != "kube-system" || name != "cookbook-lock" || d != 60*time.Second || r != 5*time.Second || cl.RecordsKeep() != 100 {
		t.Errorf("defaults: %s/%s %s %s keep %d", ns, name, d, r, cl.RecordsKeep())
	}
}

func TestCheckHostname(t *testing.T) {
	for _, ok := range []string{"a", "toolsbeta-test-k8s-worker-7", strings.Repeat("a", 63)} {
		if err := CheckHostname(ok); err != nil {
			t.Errorf("CheckHostname(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "a-", "A", "a;rm -rf /", "a.b", strings.Repeat("a", 64), "a b"} {
		if err := CheckHostname(bad); err == nil {
			t.Errorf("CheckHostname(%q) accepted", bad)
		}
	}
}

// base is a valid configuration whose lines the cases below edit; ssh.user is on line 6.
const base = `clusters:
  toolsbeta:
    openstack:
      cloud: c
    ssh:
      user: root
      port: 22
      sudo: true
    controlNodes: [toolsbeta-control-1]
    roles:
      worker:
        prefix: toolsbeta-test-k8s-worker
        serverGroup: {name: g, policy: anti-affinity}
        labels: {a.example/b: "true"}
        taints: [{key: k, effect: NoSchedule}]
`

// edit replaces old (which must be in base) with new.
func edit(t *testing.T, old, new string) string {
	t.Helper()
	if !strings.Contains(base, old) {
		t.Fatalf("%q is not in the base configuration", old)
	}
	return strings.Replace(base, old, new, 1)
}

func TestParseMessages(t *testing.T) {
	long := strings.Repeat("x", 1000000)
	tests := []struct {
		name string
		old  string // edit base: replace old by new
		new  string
		yaml string // or use this document
		want string // the whole message after "config test.yaml: "; "" is no error
	}{
		{name: "valid", old: "", new: ""},

		// Unknown keys, at several depths, with a suggestion when one is close.
		{name: "unknown top-level key", old: "clusters:", new: "clustrs:",
			want: `clustrs: unknown key (did you mean "clusters"?)`},
		{name: "unknown cluster key", old: "    controlNodes:", new: "    domian: x\n    controlNodes:",
			want: `clusters.toolsbeta.domian: unknown key (did you mean "domain"?)`},
		{name: "unknown ssh key", old: "user: root", new: "usr: root",
			want: `clusters.toolsbeta.ssh.usr: unknown key (did you mean "user"?)`},
		{name: "unknown role key", old: "        prefix:", new: "        flavour: big\n        prefix:",
			want: `clusters.toolsbeta.roles.worker.flavour: unknown key (did you mean "flavor"?)`},
		{name: "unknown key in a list item", old: "{key: k, effect: NoSchedule}", new: "{key: k, efect: NoSchedule}",
			want: `clusters.toolsbeta.roles.worker.taints[0].efect: unknown key (did you mean "effect"?)`},
		{name: "unknown key differs in case", old: "      sudo: true", new: "      INSECUREIGNOREHOSTKEY: true",
			want: `clusters.toolsbeta.ssh.INSECUREIGNOREHOSTKEY: unknown key (did you mean "insecureIgnoreHostKey"?)`},
		{name: "unknown key far from any", old: "      cloud: c", new: "      cloud: c\n      region: eqiad",
			want: `clusters.toolsbeta.openstack.region: unknown key (known keys: cloud, project, cloudsFile)`},
		{name: "cluster, role and label names are not keys",
			old: "      worker:", new: "      anything-goes:\n        prefix: p\n        labels: {whatever: x}\n      worker:"},

		// Types, in YAML words.
		{name: "not a whole number", old: "port: 22", new: "port: abc",
			want: `clusters.toolsbeta.ssh.port: "abc" is not a whole number`},
		{name: "fraction", old: "port: 22", new: "port: 22.5",
			want: `clusters.toolsbeta.ssh.port: "22.5" is not a whole number`},
		{name: "quoted number", old: "port: 22", new: `port: "22"`,
			want: `clusters.toolsbeta.ssh.port: "22" is not a whole number (remove the quotes)`},
		{name: "not a boolean", old: "sudo: true", new: "sudo: maybe",
			want: `clusters.toolsbeta.ssh.sudo: "maybe" is not true or false`},
		{name: "yes is a boolean", old: "sudo: true", new: "sudo: yes"},
		{name: "list for a string", old: "user: root", new: "user: [root]",
			want: `clusters.toolsbeta.ssh.user: found a list, expected a string`},
		{name: "string for a list", old: "[toolsbeta-control-1]", new: "toolsbeta-control-1",
			want: `clusters.toolsbeta.controlNodes: "toolsbeta-control-1" is not a list`},
		{name: "list for a mapping", old: "    openstack:\n      cloud: c", new: "    openstack: [c]",
			want: `clusters.toolsbeta.openstack: found a list, expected a mapping`},
		{name: "document is a list", yaml: "- a\n- b\n", want: `found a list, expected a mapping`},
		{name: "numbers are strings where strings are wanted", old: "cloud: c", new: "cloud: 42"},

		// Duplicates: the key path and both lines.
		{name: "duplicate key", old: "      port: 22", new: "      port: 22\n      user: admin",
			want: `clusters.toolsbeta.ssh.user: duplicate key (lines 6 and 8)`},
		{name: "duplicate cluster", yaml: base + "  toolsbeta: {}\n",
			want: `clusters.toolsbeta: duplicate key (lines 2 and 16)`},

		// Long values are cut; errors are one line.
		{name: "long value", old: "port: 22", new: "port: " + long,
			want: `clusters.toolsbeta.ssh.port: "` + strings.Repeat("x", 60) + `"... is not a whole number`},
		{name: "multi-line value", old: "port: 22", new: "port: |\n        a\n        b",
			want: `clusters.toolsbeta.ssh.port: "a\nb\n" is not a whole number`},
		{name: "long unknown key", old: "user: root", new: "user: root\n      " + long[:1000] + ": 1",
			want: `clusters.toolsbeta.ssh."` + strings.Repeat("x", 60) + `"...: unknown key (known keys: user, port, sudo, jumpHost, knownHosts, identityFiles, insecureIgnoreHostKey, connectTo)`},

		// Syntax errors keep their line.
		{name: "syntax error", old: "port: 22", new: "port: [22",
			want: `line 7: did not find expected ',' or ']'`},
		{name: "tab", old: "      port: 22", new: "\tport: 22",
			want: `line 7: found a tab character that violates indentation`},
		{name: "bad indentation", old: "      port: 22", new: "      port: 22\n     bad: 1",
			want: `line 7: did not find expected key`}, // the parser reports the line before

		// One document only.
		{name: "second document", yaml: base + "---\nclusters: {}\n", want: `line 17: a second YAML document (after ---) would be ignored`},
		{name: "document markers", yaml: "---\n" + base + "---\n...\n"},
		{name: "only a comment", yaml: "# nothing yet\n", want: `clusters: at least one cluster is required`},

		// Anchors, aliases and merges are followed.
		{name: "merge", yaml: "defaults: &d {}\n", want: `defaults: unknown key (known keys: audit, clusters)`},
		{name: "merged ssh settings", old: "    ssh:\n      user: root", new: "    ssh:\n      <<: {user: root, prot: 2}",
			want: `clusters.toolsbeta.ssh.prot: unknown key (did you mean "port"?)`},
		{name: "alias bomb", yaml: "a: &a [x, x, x, x, x, x, x, x, x, x]\n" +
			"b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n" +
			"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n" +
			"d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n" +
			"e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n" +
			"f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
			want: `a: unknown key (known keys: audit, clusters); b: unknown key (known keys: audit, clusters); ` +
				`c: unknown key (known keys: audit, clusters); d: unknown key (known keys: audit, clusters); ` +
				`e: unknown key (known keys: audit, clusters); and 1 more`},

		// The validation's messages are kept.
		{name: "validation", old: "cloud: c", new: "cloud: ''",
			want: `clusters.toolsbeta.openstack.cloud: required`},
		{name: "validation cuts values", old: "[toolsbeta-control-1]", new: "[" + long[:5000] + "]",
			want: `clusters.toolsbeta.controlNodes[0]: "` + strings.Repeat("x", 60) + `"... is not a valid hostname (RFC 1123 label: a-z, 0-9 and '-', at most 63 characters, no leading or trailing '-')`},
		{name: "odd cluster name", old: "  toolsbeta:", new: "  tools beta:",
			want: `clusters."tools beta": "tools beta" is not a valid name (lowercase letters, digits and '-', at most 63 characters)`},
		{name: "many validation errors", yaml: "clusters: {a: {}, b: {}, c: {}}",
			want: `clusters.a.openstack.cloud: required; clusters.a.roles: at least one role is required; ` +
				`clusters.a.ssh.user: required; clusters.b.openstack.cloud: required; ` +
				`clusters.b.roles: at least one role is required; and 4 more`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := tt.yaml
			if data == "" {
				data = edit(t, tt.old, tt.new)
			}
			_, err := Parse("test.yaml", []byte(data))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			got := err.Error()
			if want := "config test.yaml: " + tt.want; got != want {
				t.Errorf("error\n got %.500q\nwant %q", got, want)
			}
			if strings.Contains(got, "\n") || len(got) > 500 {
				t.Errorf("error is not one short line: %.500q", got)
			}
		})
	}
}

func TestLoadFiles(t *testing.T) {
	dir := t.TempDir()
	file := func(name string) string { return filepath.Join(dir, name) }
	write := func(name string, data []byte) string {
		if err := os.WriteFile(file(name), data, 0o600); err != nil {
			t.Fatal(err)
		}
		return file(name)
	}
	good := write("good.yaml", []byte(base))
	big := write("big.yaml", nil)
	if err := os.Truncate(big, 10<<20); err != nil {
		t.Fatal(err)
	}
	justTooBig := write("just-too-big.yaml", make([]byte, MaxSize+1))
	if err := syscall.Mkfifo(file("fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", file("sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := os.Symlink(good, file("link-to-good")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(file("fifo"), file("link-to-fifo")); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		path string
		want string // the whole message; "" is no error
	}{
		{name: "regular file", path: good},
		{name: "symlink to a regular file", path: file("link-to-good")},
		{name: "FIFO", path: file("fifo"), want: "config " + file("fifo") + ": is a named pipe (FIFO), expected a regular file"},
		{name: "symlink to a FIFO", path: file("link-to-fifo"),
			want: "config " + file("link-to-fifo") + ": is a named pipe (FIFO), expected a regular file"},
		{name: "directory", path: dir, want: "config " + dir + ": is a directory, expected a regular file"},
		{name: "socket", path: file("sock"), want: "config " + file("sock") + ": is a socket, expected a regular file"},
		{name: "device", path: "/dev/null", want: "config /dev/null: is a character device, expected a regular file"},
		{name: "10 MiB", path: big, want: "config " + big + ": is 10 MiB (10485760 bytes), larger than the 1 MiB limit"},
		{name: "1 MiB and a byte", path: justTooBig,
			want: "config " + justTooBig + ": is 1 MiB (1048577 bytes), larger than the 1 MiB limit"},
		{name: "missing", path: file("missing.yaml"), want: "read config: stat " + file("missing.yaml") + ": no such file or directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := os.Stat(tt.path); errors.Is(err, fs.ErrNotExist) && tt.name == "device" {
				t.Skip("no /dev/null here")
			}
			done := make(chan error, 1)
			go func() {
				_, err := Load(tt.path)
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Load did not return within 5s")
			}
			if tt.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || err.Error() != tt.want {
				t.Fatalf("error\n got %v\nwant %s", err, tt.want)
			}
		})
	}
	if _, err := Load(file("missing.yaml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing file's error %v is not fs.ErrNotExist", err)
	}
}

// TestParseLimits feeds Parse more than Load would ever read: the size is refused, and a
// huge value in an error is cut.
func TestParseLimits(t *testing.T) {
	huge := strings.Repeat("x", 10<<20)
	data := edit(t, "port: 22", "port: "+huge)
	_, err := Parse("test.yaml", []byte(data))
	if want := fmt.Sprintf("config test.yaml: is 10 MiB (%d bytes), larger than the 1 MiB limit", len(data)); err == nil || err.Error() != want {
		t.Errorf("error\n got %.300v\nwant %s", err, want)
	}
	if got, want := quote(huge), `"`+strings.Repeat("x", 60)+`"...`; got != want {
		t.Errorf("quote(10 MB) = %.300q, want %q", got, want)
	}
	if got, want := quote("é\n"+strings.Repeat("é", 100)), `"é\n`+strings.Repeat("é", 58)+`"...`; got != want {
		t.Errorf("quote cuts runes: got %q, want %q", got, want)
	}
	if got := oneLine("line 1\nline 2 " + huge); strings.Contains(got, "\n") || len(got) > 310 {
		t.Errorf("oneLine = %.400q", got)
	}
}
