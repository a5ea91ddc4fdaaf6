// Package etcdctl builds the etcdctl (API v3) command lines that read and change the
// stacked etcd of a kubeadm control node (or an external etcd, on its own hosts), and reads their JSON output: the member list,
// the health of every member's endpoint, and the quorum rules etcd applies to them.
package etcdctl

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
)

// TLS says how etcdctl reaches etcd: the endpoint and the client certificate.
type TLS struct {
	Endpoint, CACert, Cert, Key string
}

// Stacked is kubeadm's stacked etcd: its local endpoint and the health-check client
// certificate kubeadm creates on every control node.
var Stacked = TLS{
	Endpoint: "https://127.0.0.1:2379",
	CACert:   "/etc/kubernetes/pki/etcd/ca.crt",
	Cert:     "/etc/kubernetes/pki/etcd/healthcheck-client.crt",
	Key:      "/etc/kubernetes/pki/etcd/healthcheck-client.key",
}

// External is an etcd host's own member (its client URL https://host:2379, host being
// what SSH connects to) with the certificate paths configured for that host.
func External(host, cacert, cert, key string) TLS {
	return TLS{Endpoint: "https://" + net.JoinHostPort(host, "2379"), CACert: cacert, Cert: cert, Key: key}
}

// Argv is an etcdctl command line with the TLS flags.
func (t TLS) Argv(args ...string) []string {
	return append([]string{"etcdctl", "--endpoints", t.Endpoint, "--cacert", t.CACert, "--cert", t.Cert, "--key", t.Key}, args...)
}

// MemberListArgv is `etcdctl member list -w json`.
func (t TLS) MemberListArgv() []string { return t.Argv("member", "list", "-w", "json") }

// HealthArgv is `etcdctl endpoint health --cluster -w json` (exit status 1, and the JSON
// still printed, when an endpoint is unhealthy).
func (t TLS) HealthArgv() []string { return t.Argv("endpoint", "health", "--cluster", "-w", "json") }

// RemoveArgv is `etcdctl member remove ID` (ID in hex).
func (t TLS) RemoveArgv(id uint64) []string { return t.Argv("member", "remove", HexID(id)) }

// Argv is an etcdctl command line run on a control node, with kubeadm's TLS flags.
func Argv(args ...string) []string { return Stacked.Argv(args...) }

// MemberListArgv is Stacked.MemberListArgv.
func MemberListArgv() []string { return Stacked.MemberListArgv() }

// HealthArgv is Stacked.HealthArgv.
func HealthArgv() []string { return Stacked.HealthArgv() }

// RemoveArgv is Stacked.RemoveArgv.
func RemoveArgv(id uint64) []string { return Stacked.RemoveArgv(id) }

// HexID is a member id as etcdctl takes and prints it.
func HexID(id uint64) string { return fmt.Sprintf("%x", id) }

// Member is a member of `etcdctl member list -w json`.
type Member struct {
	ID         uint64   `json:"ID"`
	Name       string   `json:"name"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs"`
	IsLearner  bool     `json:"isLearner"`
}

// Started reports whether the member has started (etcd lists a member that was added but
// never started without name and client URLs).
func (m Member) Started() bool { return m.Name != "" && len(m.ClientURLs) > 0 }

// Health is an endpoint of `etcdctl endpoint health --cluster -w json`.
type Health struct {
	Endpoint string `json:"endpoint"`
	Health   bool   `json:"health"`
	Took     string `json:"took"`
	Error    string `json:"error,omitempty"`
}

// ParseMemberList reads the output of MemberListArgv.
func ParseMemberList(out []byte) ([]Member, error) {
	var r struct {
		Header *struct {
			ClusterID uint64 `json:"cluster_id"`
		} `json:"header"`
		Members []Member `json:"members"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("etcdctl member list: not its JSON output: %w", err)
	}
	if r.Header == nil || len(r.Members) == 0 {
		return nil, errors.New("etcdctl member list: no header or no member in its output")
	}
	return r.Members, nil
}

// ParseHealth reads the output of HealthArgv.
func ParseHealth(out []byte) ([]Health, error) {
	var hs []Health
	if err := json.Unmarshal(out, &hs); err != nil {
		return nil, fmt.Errorf("etcdctl endpoint health: not its JSON output: %w", err)
	}
	return hs, nil
}

// Quorum is how many voting members of n must be started for etcd to commit.
func Quorum(n int) int { return n/2 + 1 }

// Status is what a control node's etcdctl said of the cluster.
type Status struct {
	Members []Member
	Health  []Health
}

// healthy reports whether the member's client endpoint answered healthy.
func (s Status) healthy(m Member) (bool, string) {
	if !m.Started() {
		return false, "not started"
	}
	for _, h := range s.Health {
		for _, u := range m.ClientURLs {
			if h.Endpoint == u {
				if h.Health {
					return true, ""
				}
				if h.Error == "" {
					return false, "unhealthy"
				}
				return false, "unhealthy: " + h.Error
			}
		}
	}
	return false, "no health report for its endpoint"
}

// Member returns the member of a name (a node's hostname, as kubeadm names them).
func (s Status) Member(name string) (Member, bool) {
	for _, m := range s.Members {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// Names are the members' names, sorted ("" for a member not started).
func (s Status) Names() []string {
	var out []string
	for _, m := range s.Members {
		out = append(out, m.Name)
	}
	sort.Strings(out)
	return out
}

// Problems describes every member that is not started and healthy, one string each
// ("name (id): why"); none when all are.
func (s Status) Problems() []string {
	var out []string
	for _, m := range s.Members {
		if ok, why := s.healthy(m); !ok {
			name := m.Name
			if name == "" {
				name = "(unnamed)"
			}
			out = append(out, fmt.Sprintf("%s (%s): %s", name, HexID(m.ID), why))
		}
	}
	return out
}

// Healthy counts the voting members that are started and healthy, leaving out the member
// of a name ("" leaves out none).
func (s Status) Healthy(except string) (voting, healthy int) {
	for _, m := range s.Members {
		if m.IsLearner || (except != "" && m.Name == except) {
			continue
		}
		voting++
		if ok, _ := s.healthy(m); ok {
			healthy++
		}
	}
	return voting, healthy
}

// unhealthyList is " (unhealthy: ...)" naming the members that are not healthy, or "".
func (s Status) unhealthyList() string {
	if p := s.Problems(); len(p) > 0 {
		return " (unhealthy: " + strings.Join(p, "; ") + ")"
	}
	return ""
}

// CheckRemove is nil if removing the member of a name leaves a quorum of the remaining
// voting members healthy (etcd's own strict reconfiguration rule), else an error saying
// how many would be left.
func (s Status) CheckRemove(name string) error {
	n, ok := s.Healthy(name)
	if ok < Quorum(n) {
		return fmt.Errorf("removing %s would leave %d healthy etcd member(s) of %d, fewer than the quorum of %d%s",
			name, ok, n, Quorum(n), s.unhealthyList())
	}
	return nil
}

// CheckStop is nil if stopping the member of a name (a reboot) keeps a quorum of all
// voting members healthy, else an error saying how many would be left.
func (s Status) CheckStop(name string) error {
	n, _ := s.Healthy("")
	_, ok := s.Healthy(name)
	if ok < Quorum(n) {
		return fmt.Errorf("stopping %s would leave %d healthy etcd member(s) of %d, fewer than the quorum of %d%s",
			name, ok, n, Quorum(n), s.unhealthyList())
	}
	return nil
}
