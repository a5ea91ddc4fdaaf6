package lab

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
)

// TestPrometheusScrapesStuckProcs: the real Prometheus scrapes one node exporter per
// host (two hosts here, each its own target); the Toolforge query returns the host a
// test made report stuck processes (instance = its target's address:port), not the one
// reporting none, and follows a change within seconds, a host dropped from the targets
// and a host that goes down; Stop leaves no process, port or dir.
func TestPrometheusScrapesStuckProcs(t *testing.T) {
	var stuck [3]atomic.Int64
	var hosts [3]*NodeExporter
	for i := range hosts {
		e, err := StartNodeExporter("127.0.0.1:0", func() int { return int(stuck[i].Load()) })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		hosts[i] = e
	}
	p := NeedPrometheus(t, hosts[0].Addr, hosts[1].Addr)
	stuck[0].Store(3)
	stuck[2].Store(7) // not a target: never seen
	const q = "sum(prometheus_k8s_nfs_stuck_total_procs) by (instance) > 0"
	ctx := context.Background()
	if err := p.WaitQuery(ctx, q, map[string]float64{hosts[0].Addr: 3}); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitQuery(ctx, "prometheus_k8s_nfs_stuck_total_procs", map[string]float64{hosts[0].Addr: 3, hosts[1].Addr: 0}); err != nil {
		t.Fatal(err)
	}
	stuck[0].Store(0)
	stuck[1].Store(5)
	if err := p.WaitQuery(ctx, q, map[string]float64{hosts[1].Addr: 5}); err != nil {
		t.Fatal(err)
	}
	// The targets change (a host added, one gone): scraped within seconds.
	if err := p.SetTargets(hosts[1].Addr, hosts[2].Addr); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitQuery(ctx, q, map[string]float64{hosts[1].Addr: 5, hosts[2].Addr: 7}); err != nil {
		t.Fatal(err)
	}
	// A host that goes down reports nothing (its series go stale).
	hosts[1].Close()
	if err := p.WaitQuery(ctx, q, map[string]float64{hosts[2].Addr: 7}); err != nil {
		t.Fatal(err)
	}
	client, err := promapi.NewClient(promapi.Config{Address: p.URL})
	if err != nil {
		t.Fatal(err)
	}
	api := promv1.NewAPI(client)
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var perr *promv1.Error
	if _, _, err := api.Query(qctx, "sum(", time.Now()); !errors.As(err, &perr) || perr.Type != promv1.ErrBadData {
		t.Errorf("bad query error = %#v, want a bad_data error", err)
	}

	stopLeavesNothing(t, p.Pid(), p.Dir, p.URL, p.Stop)
}
