package config

import (
	"fmt"
	"path"
)

// Etcd says where the cluster's etcd runs. Without it (or without external) etcd is
// kubeadm's stacked etcd: a member on every control node, read with etcdctl there.
type Etcd struct {
	// External, when set, is an etcd cluster of its own hosts (not the control nodes):
	// the cookbooks ask it over SSH on those hosts and never change its membership.
	External *ExternalEtcd `json:"external,omitempty"`
}

// ExternalEtcd is an etcd cluster hosted apart from the control plane.
type ExternalEtcd struct {
	// Hosts are the etcd hosts' hostnames: etcdctl runs on the first that answers, over
	// SSH as on the nodes (hostname.domain, or its address with ssh.connectTo: address).
	Hosts []string `json:"hosts"`
	// CACert, Cert and Key are etcdctl's --cacert, --cert and --key: absolute paths on
	// those hosts, which may use {hostname} and {fqdn} (a host's own certificate, as
	// Puppet's are named). Required: kubeadm's stacked paths are not there.
	CACert string `json:"cacert"`
	Cert   string `json:"cert"`
	Key    string `json:"key"`
}

// EtcdPlaceholders are what the external etcd's certificate paths may use.
var EtcdPlaceholders = []string{"hostname", "fqdn"}

// ExternalEtcd returns the cluster's external etcd, nil for stacked etcd.
func (cl *Cluster) ExternalEtcd() *ExternalEtcd {
	return cl.Etcd.External
}

// EtcdTLSPaths are the certificate paths of etcdctl on an etcd host (its hostname), the
// placeholders filled in.
func (cl *Cluster) EtcdTLSPaths(host string) (cacert, cert, key string) {
	e := cl.Etcd.External
	if e == nil {
		return "", "", ""
	}
	vars := map[string]string{"hostname": host, "fqdn": cl.FQDN(host)}
	fill := func(s string) string {
		out, err := ExpandTemplate(s, vars)
		if err != nil { // checked when the file was loaded
			return s
		}
		return out
	}
	return fill(e.CACert), fill(e.Cert), fill(e.Key)
}

func (e *Etcd) validate(p string) []error {
	x := e.External
	if x == nil {
		return nil
	}
	p += ".external"
	var errs []error
	if len(x.Hosts) == 0 {
		errs = append(errs, fmt.Errorf("%s.hosts: at least one etcd host is required", p))
	}
	seen := map[string]int{}
	for i, h := range x.Hosts {
		if err := CheckHostname(h); err != nil {
			errs = append(errs, fmt.Errorf("%s.hosts[%d]: %w", p, i, err))
		} else if j, ok := seen[h]; ok {
			errs = append(errs, fmt.Errorf("%s.hosts[%d]: %s is also hosts[%d]", p, i, quote(h), j))
		}
		seen[h] = i
	}
	for _, f := range []struct{ key, v string }{{"cacert", x.CACert}, {"cert", x.Cert}, {"key", x.Key}} {
		switch {
		case f.v == "":
			errs = append(errs, fmt.Errorf("%s.%s: required (a path on the etcd hosts; kubeadm's stacked etcd paths are not there)", p, f.key))
		case !path.IsAbs(f.v):
			errs = append(errs, fmt.Errorf("%s.%s: %s is not an absolute path (expected one such as /etc/etcd/ssl/ca.pem)", p, f.key, quote(f.v)))
		default:
			if err := CheckTemplate(f.v, EtcdPlaceholders); err != nil {
				errs = append(errs, fmt.Errorf("%s.%s: %w", p, f.key, err))
			}
		}
	}
	return errs
}
