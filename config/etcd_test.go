package config

import (
	"strings"
	"testing"
)

// TestExternalEtcd: an external etcd section is loaded with its hosts and certificate
// paths (placeholders filled in per host); each mistake is one error naming the field.
func TestExternalEtcd(t *testing.T) {
	const base = `
clusters:
  toolsbeta:
    openstack: {cloud: c}
    ssh: {user: root}
    domain: toolsbeta.eqiad1.wikimedia.cloud
    roles:
      control: {prefix: toolsbeta-test-k8s-control, controlPlane: true}
`
	with := func(etcd string) string {
		return strings.Replace(base, "    roles:", "    etcd:\n"+etcd+"    roles:", 1)
	}
	good := `      external:
        hosts: [toolsbeta-test-etcd-1, toolsbeta-test-etcd-2]
        cacert: /var/lib/puppet/ssl/certs/ca.pem
        cert: /var/lib/puppet/ssl/certs/{fqdn}.pem
        key: /var/lib/puppet/ssl/private_keys/{fqdn}.pem
`
	c, err := Parse("test.yaml", []byte(with(good)))
	if err != nil {
		t.Fatal(err)
	}
	cl, _ := c.Cluster("toolsbeta")
	x := cl.ExternalEtcd()
	if x == nil || strings.Join(x.Hosts, ",") != "toolsbeta-test-etcd-1,toolsbeta-test-etcd-2" {
		t.Fatalf("external etcd = %+v", x)
	}
	ca, cert, key := cl.EtcdTLSPaths("toolsbeta-test-etcd-2")
	if ca != "/var/lib/puppet/ssl/certs/ca.pem" ||
		cert != "/var/lib/puppet/ssl/certs/toolsbeta-test-etcd-2.toolsbeta.eqiad1.wikimedia.cloud.pem" ||
		key != "/var/lib/puppet/ssl/private_keys/toolsbeta-test-etcd-2.toolsbeta.eqiad1.wikimedia.cloud.pem" {
		t.Errorf("TLS paths = %q %q %q", ca, cert, key)
	}
	// Stacked: no section, or an empty one.
	for _, y := range []string{base, with("      {}\n")} {
		c, err := Parse("test.yaml", []byte(y))
		if err != nil {
			t.Fatal(err)
		}
		if x := c.Clusters["toolsbeta"].ExternalEtcd(); x != nil {
			t.Errorf("stacked cluster has external etcd %+v", x)
		}
	}

	for _, tt := range []struct{ name, etcd, want string }{
		{"no hosts", strings.Replace(good, "[toolsbeta-test-etcd-1, toolsbeta-test-etcd-2]", "[]", 1),
			"config test.yaml: clusters.toolsbeta.etcd.external.hosts: at least one etcd host is required"},
		{"bad host", strings.Replace(good, "toolsbeta-test-etcd-2]", "Etcd_2]", 1),
			`config test.yaml: clusters.toolsbeta.etcd.external.hosts[1]: "Etcd_2" is not a valid hostname`},
		{"duplicate host", strings.Replace(good, "toolsbeta-test-etcd-2]", "toolsbeta-test-etcd-1]", 1),
			`config test.yaml: clusters.toolsbeta.etcd.external.hosts[1]: "toolsbeta-test-etcd-1" is also hosts[0]`},
		{"no cacert", strings.Replace(good, "        cacert: /var/lib/puppet/ssl/certs/ca.pem\n", "", 1),
			"config test.yaml: clusters.toolsbeta.etcd.external.cacert: required (a path on the etcd hosts; kubeadm's stacked etcd paths are not there)"},
		{"relative key", strings.Replace(good, "key: /var/lib/puppet/ssl/private_keys/{fqdn}.pem", "key: client.key", 1),
			`config test.yaml: clusters.toolsbeta.etcd.external.key: "client.key" is not an absolute path (expected one such as /etc/etcd/ssl/ca.pem)`},
		{"unknown placeholder", strings.Replace(good, "{fqdn}.pem\n        key", "{host}.pem\n        key", 1),
			"config test.yaml: clusters.toolsbeta.etcd.external.cert: unknown placeholder {host} (known: {fqdn}, {hostname})"},
		{"unknown key", strings.Replace(good, "hosts:", "endpoints: [x]\n        hosts:", 1),
			"clusters.toolsbeta.etcd.external.endpoints: unknown key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("test.yaml", []byte(with(tt.etcd)))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}
