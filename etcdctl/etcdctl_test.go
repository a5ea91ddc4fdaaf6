package etcdctl

import (
	"strings"
	"testing"
)

// Outputs as etcdctl 3.6 prints them (json.Marshal of its responses).
const (
	listJSON = `{"header":{"cluster_id":14841639068965178418,"member_id":10276657743932975437,"raft_term":3},"members":[` +
		`{"ID":10276657743932975437,"name":"c-1","peerURLs":["https://10.0.0.1:2380"],"clientURLs":["https://10.0.0.1:2379"]},` +
		`{"ID":1204397155637735236,"name":"c-2","peerURLs":["https://10.0.0.2:2380"],"clientURLs":["https://10.0.0.2:2379"]},` +
		`{"ID":1581634245487765000,"name":"c-3","peerURLs":["https://10.0.0.3:2380"],"clientURLs":["https://10.0.0.3:2379"]}]}`
	allHealthy = `[{"endpoint":"https://10.0.0.1:2379","health":true,"took":"1.1ms"},{"endpoint":"https://10.0.0.2:2379","health":true,"took":"1.3ms"},{"endpoint":"https://10.0.0.3:2379","health":true,"took":"1.2ms"}]`
	threeDown  = `[{"endpoint":"https://10.0.0.1:2379","health":true,"took":"1.1ms"},{"endpoint":"https://10.0.0.2:2379","health":true,"took":"1.3ms"},{"endpoint":"https://10.0.0.3:2379","health":false,"took":"5.000869714s","error":"context deadline exceeded"}]`
)

func status(t *testing.T, list, health string) Status {
	t.Helper()
	ms, err := ParseMemberList([]byte(list))
	if err != nil {
		t.Fatal(err)
	}
	hs, err := ParseHealth([]byte(health))
	if err != nil {
		t.Fatal(err)
	}
	return Status{Members: ms, Health: hs}
}

func TestParse(t *testing.T) {
	s := status(t, listJSON, allHealthy)
	m, ok := s.Member("c-1")
	// 10276657743932975437 does not fit a float64: the id must survive as uint64.
	if !ok || HexID(m.ID) != "8e9e05c52164694d" || !m.Started() {
		t.Errorf("member c-1: %+v, %v", m, ok)
	}
	if p := s.Problems(); len(p) != 0 {
		t.Errorf("problems of a healthy cluster: %v", p)
	}
	if got := strings.Join(RemoveArgv(m.ID), " "); !strings.HasSuffix(got, "member remove 8e9e05c52164694d") || !strings.Contains(got, "--cacert /etc/kubernetes/pki/etcd/ca.crt") {
		t.Errorf("remove argv %q", got)
	}
	for _, bad := range []string{"", "Error: context deadline exceeded", `{"members":[]}`} {
		if _, err := ParseMemberList([]byte(bad)); err == nil {
			t.Errorf("member list %q accepted", bad)
		}
	}
	if _, err := ParseHealth([]byte("c-1 is healthy")); err == nil {
		t.Error("the table output is accepted as health JSON")
	}
}

func TestQuorumRules(t *testing.T) {
	unstarted := strings.Replace(listJSON, `{"ID":1581634245487765000,"name":"c-3","peerURLs":["https://10.0.0.3:2380"],"clientURLs":["https://10.0.0.3:2379"]}`,
		`{"ID":1581634245487765000,"peerURLs":["https://10.0.0.3:2380"]}`, 1)
	for _, c := range []struct {
		name, list, health string
		remove, stop       string
		removeErr, stopErr string
		problems           int
	}{
		{"all healthy: any one removed or stopped", listJSON, allHealthy, "c-1", "c-1", "", "", 0},
		{"c-3 dead: removing it is fine", listJSON, threeDown, "c-3", "c-3", "", "", 1},
		{"c-3 dead: removing c-1 breaks quorum", listJSON, threeDown, "c-1", "c-1", "leave 1 healthy etcd member(s) of 2, fewer than the quorum of 2 (unhealthy: c-3", "leave 1 healthy etcd member(s) of 3", 1},
		{"c-3 never started counts as unhealthy", unstarted, allHealthy, "c-2", "c-2", "quorum of 2 (unhealthy: (unnamed) (15f317f766e42608): not started)", "quorum of 2", 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := status(t, c.list, c.health)
			if p := s.Problems(); len(p) != c.problems {
				t.Errorf("problems %v, want %d", p, c.problems)
			}
			check := func(what string, err error, want string) {
				if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
					t.Errorf("%s: %v; want %q", what, err, want)
				}
			}
			check("remove "+c.remove, s.CheckRemove(c.remove), c.removeErr)
			check("stop "+c.stop, s.CheckStop(c.stop), c.stopErr)
		})
	}
}

// TestArgv: the stacked command lines carry kubeadm's local endpoint and certificates;
// an external host's carry its own client URL and the configured certificates.
func TestArgv(t *testing.T) {
	if got, want := strings.Join(MemberListArgv(), " "), "etcdctl --endpoints https://127.0.0.1:2379 --cacert /etc/kubernetes/pki/etcd/ca.crt --cert /etc/kubernetes/pki/etcd/healthcheck-client.crt --key /etc/kubernetes/pki/etcd/healthcheck-client.key member list -w json"; got != want {
		t.Errorf("stacked member list = %q, want %q", got, want)
	}
	x := External("etcd-1.example.org", "/etc/etcd/ssl/ca.pem", "/etc/etcd/ssl/client.pem", "/etc/etcd/ssl/client.key")
	if got, want := strings.Join(x.HealthArgv(), " "), "etcdctl --endpoints https://etcd-1.example.org:2379 --cacert /etc/etcd/ssl/ca.pem --cert /etc/etcd/ssl/client.pem --key /etc/etcd/ssl/client.key endpoint health --cluster -w json"; got != want {
		t.Errorf("external endpoint health = %q, want %q", got, want)
	}
	if got, want := strings.Join(x.RemoveArgv(0x8e9e05c52164694d), " "), "etcdctl --endpoints https://etcd-1.example.org:2379 --cacert /etc/etcd/ssl/ca.pem --cert /etc/etcd/ssl/client.pem --key /etc/etcd/ssl/client.key member remove 8e9e05c52164694d"; got != want {
		t.Errorf("external member remove = %q, want %q", got, want)
	}
}
