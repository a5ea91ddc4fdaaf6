package lab

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
)

// TestPrometheusScrapesStuckProcs: the real Prometheus scrapes the lab's node metrics;
// the Toolforge query returns the VM a test made report stuck processes (with its
// instance label), not the one reporting none, and follows a change within seconds;
// Stop leaves no process, port or dir.
func TestPrometheusScrapesStuckProcs(t *testing.T) {
	p := NeedPrometheus(t)
	p.Metrics.SetStuck("w-1", 3)
	p.Metrics.SetStuck("w-2", 0)
	const q = "sum(prometheus_k8s_nfs_stuck_total_procs) by (instance) > 0"
	ctx := context.Background()
	if err := p.WaitQuery(ctx, q, map[string]float64{"w-1:9100": 3}); err != nil {
		t.Fatal(err)
	}
	p.Metrics.SetStuck("w-1", 0)
	p.Metrics.SetStuck("w-2", 5)
	if err := p.WaitQuery(ctx, q, map[string]float64{"w-2:9100": 5}); err != nil {
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

	pid, dir := p.Pid(), p.Dir
	addr := strings.TrimPrefix(p.URL, "http://")
	if !ours(pid, dir) {
		t.Fatalf("pid %d does not run with %s on its command line", pid, dir)
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if ours(pid, dir) {
		t.Errorf("pid %d still runs after Stop", pid)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there after Stop: %v", dir, err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("%s still accepts connections after Stop", addr)
	}
}
