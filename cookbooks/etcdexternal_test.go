package cookbooks

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/etcdctl"
)

// etcdOf is the status of members named names, healthy but for those in down.
func etcdOf(names []string, down ...string) etcdctl.Status {
	var st etcdctl.Status
	for i, n := range names {
		url := "https://" + n + ":2379"
		st.Members = append(st.Members, etcdctl.Member{ID: uint64(0xa0 + i), Name: n, ClientURLs: []string{url}})
		h := etcdctl.Health{Endpoint: url, Health: true}
		for _, d := range down {
			if d == n {
				h = etcdctl.Health{Endpoint: url, Error: "context deadline exceeded"}
			}
		}
		st.Health = append(st.Health, h)
	}
	return st
}

// TestEtcdExternal: with clusters.X.etcd.external a control node is no etcd member: the
// checks around an added, removed or rebooted control node ask only that every member of
// the external etcd is started and healthy (none expects the node to be, or not be, a
// member), removing a control node removes no member (skipped without reading etcd), the
// quorum refusals do not apply to a reboot, and an unhealthy external etcd still refuses
// adding and removing control nodes, naming the member. The same status read for a
// stacked cluster keeps today's verdicts (the added node must be a member).
func TestEtcdExternal(t *testing.T) {
	members := []string{"etcd-1", "etcd-2", "etcd-3"}
	external := &config.Cluster{Name: "toy", Etcd: config.Etcd{External: &config.ExternalEtcd{
		Hosts: members, CACert: "/etc/etcd/ssl/ca.pem", Cert: "/etc/etcd/ssl/client.pem", Key: "/etc/etcd/ssl/client.key"}}}
	stacked := &config.Cluster{Name: "toy"}
	var logs strings.Builder
	env := &Env{Log: slog.New(slog.NewTextHandler(&logs, nil))}
	newClients := func(cl *config.Cluster, st etcdctl.Status) (*clients, *atomic.Int32) {
		var reads atomic.Int32
		return &clients{env: env, cl: cl, readEtcd: func(context.Context, ...string) (etcdctl.Status, string, error) {
			reads.Add(1)
			return st, "etcd-1", nil
		}}, &reads
	}
	ctx := context.Background()
	node := func(*pipeline.Values) (string, error) { return "c-4", nil }
	run := func(s pipeline.Step) error { return s.Do(ctx, &pipeline.Values{}) }
	healthy, oneDown := etcdOf(members), etcdOf(members, "etcd-3")

	t.Run("healthy", func(t *testing.T) {
		c, reads := newClients(external, healthy)
		for _, chk := range []etcdCheck{{Node: node}, {Node: node, Member: true}, {Node: node, Gone: true}, {Node: node, Unhealthy: true}} {
			s := checkEtcd(c, "check-etcd", chk)
			if err := run(s); err != nil {
				t.Errorf("checkEtcd(%+v): %v", chk, err)
			}
			if got, want := s.Desc(&pipeline.Values{}), "check that every member of the external etcd is started and healthy"; got != want {
				t.Errorf("desc = %q, want %q", got, want)
			}
		}
		for _, remove := range []bool{false, true} {
			if err := etcdRefusal(ctx, c, "c-2", remove); err != nil {
				t.Errorf("etcdRefusal(remove=%v): %v", remove, err)
			}
		}
		if err := etcdUnhealthyRefusal(ctx, c, "a control node is added"); err != nil {
			t.Errorf("etcdUnhealthyRefusal: %v", err)
		}
		reads.Store(0)
		err := run(removeEtcdMember(c, "c-2"))
		var skip *pipeline.SkipError
		if !errors.As(err, &skip) || skip.Reason != "etcd is external: c-2 has no member" {
			t.Errorf("remove-etcd-member = %v, want skipped: etcd is external: c-2 has no member", err)
		}
		if n := reads.Load(); n != 0 {
			t.Errorf("remove-etcd-member read etcd %d time(s), want none", n)
		}
	})

	t.Run("one member down", func(t *testing.T) {
		c, _ := newClients(external, oneDown)
		const named = "etcd-3 (a2): unhealthy: context deadline exceeded"
		for _, chk := range []etcdCheck{{Node: node}, {Node: node, Member: true}, {Node: node, Unhealthy: true}} {
			if err := run(checkEtcd(c, "check-etcd", chk)); err == nil || !strings.Contains(err.Error(), named) {
				t.Errorf("checkEtcd(%+v) = %v, want it to name %q", chk, err, named)
			}
		}
		for _, f := range []struct {
			name string
			err  error
		}{
			{"add", etcdUnhealthyRefusal(ctx, c, "a control node is added")},
			{"remove", etcdRefusal(ctx, c, "c-2", true)},
		} {
			var in *InputError
			if !errors.As(f.err, &in) || !strings.Contains(f.err.Error(), named) {
				t.Errorf("%s: refusal = %v, want bad input naming %q", f.name, f.err, named)
			}
		}
		if err := etcdRefusal(ctx, c, "c-2", true); !strings.Contains(err.Error(), "refused (a control node is removed only while every etcd member is started and healthy)") {
			t.Errorf("remove refusal = %v", err)
		}
		// A reboot stops no member of an external etcd: no quorum refusal (its
		// check-etcd step stops the run on the unhealthy member).
		if err := etcdRefusal(ctx, c, "c-2", false); err != nil {
			t.Errorf("reboot refusal: %v", err)
		}
	})

	t.Run("stacked unchanged", func(t *testing.T) {
		c, _ := newClients(stacked, healthy)
		if err := run(checkEtcd(c, "check-etcd-after", etcdCheck{Node: node, Member: true})); err == nil || !strings.Contains(err.Error(), "c-4 is not a member") {
			t.Errorf("stacked check after adding = %v, want c-4 is not a member", err)
		}
		c, _ = newClients(stacked, oneDown)
		if err := etcdRefusal(ctx, c, "etcd-2", false); err == nil || !strings.Contains(err.Error(), "stopping etcd-2 would leave 1 healthy etcd member(s) of 3") {
			t.Errorf("stacked reboot refusal = %v", err)
		}
	})
}
