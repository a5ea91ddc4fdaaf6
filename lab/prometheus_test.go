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
	"github.com/prometheus/common/model"
)

// TestPrometheusScrapesStuckProcs: the real Prometheus scrapes the lab's node metrics;
// the Toolforge query returns the VM a test made report stuck processes (with its
// instance label), not the one reporting none, and follows a change within seconds;
// Stop leaves no process, port or dir.
func TestPrometheusScrapesStuckProcs(t *testing.T) {
	p := NeedPrometheus(t)
	p.Metrics.SetStuck("w-1", 3)
	p.Metrics.SetStuck("w-2", 0)
	client, err := promapi.NewClient(promapi.Config{Address: p.URL})
	if err != nil {
		t.Fatal(err)
	}
	api := promv1.NewAPI(client)
	query := func(q string) map[string]float64 {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		v, _, err := api.Query(ctx, q, time.Now())
		if err != nil {
			t.Fatalf("query %s: %v", q, err)
		}
		got := map[string]float64{}
		for _, s := range v.(model.Vector) {
			got[string(s.Metric["instance"])] = float64(s.Value)
		}
		return got
	}
	const q = "sum(prometheus_k8s_nfs_stuck_total_procs) by (instance) > 0"
	waitFor := func(want string) map[string]float64 {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			got := query(q)
			if len(got) == 1 && got[want] > 0 || want == "" && len(got) == 0 {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("query %s = %v; want only %q", q, got, want)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if got := waitFor("w-1:9100"); got["w-1:9100"] != 3 {
		t.Errorf("w-1 = %v, want 3", got["w-1:9100"])
	}
	p.Metrics.SetStuck("w-1", 0)
	p.Metrics.SetStuck("w-2", 5)
	waitFor("w-2:9100")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var perr *promv1.Error
	if _, _, err := api.Query(ctx, "sum(", time.Now()); !errors.As(err, &perr) || perr.Type != promv1.ErrBadData {
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
