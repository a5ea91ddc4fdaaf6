package config

import (
	"strings"
	"testing"
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
