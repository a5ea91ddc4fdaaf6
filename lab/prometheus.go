package lab

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// The lab's Prometheus is Debian's real prometheus, started on a free loopback port with
// its storage in a temp dir of its own, scraping every second the lab's node-exporter
// stand-in (NodeMetrics): one HTTP endpoint exposing, for each lab VM a test named,
// prometheus_k8s_nfs_stuck_total_procs{instance="<hostname>:9100"} (the Toolforge metric
// counting processes stuck on NFS). It dies with the process that started it; a dir a
// killed owner left behind is swept by the next start, like the Alertmanager's.

// promPrefix names the Prometheus servers' temp dirs.
const promPrefix = "cookbook-lab-prom-"

// StuckProcsMetric is the metric the lab's node exporters report per VM.
const StuckProcsMetric = "prometheus_k8s_nfs_stuck_total_procs"

// PrometheusBinary returns the path of prometheus and whether it was found.
func PrometheusBinary() (string, bool) {
	if p, err := exec.LookPath("prometheus"); err == nil {
		return p, true
	}
	if _, err := os.Stat("/usr/bin/prometheus"); err == nil {
		return "/usr/bin/prometheus", true
	}
	return "prometheus", false
}

// NodeMetrics serves the per-VM stuck-process counts in Prometheus' text format.
type NodeMetrics struct {
	// Addr is host:port of its endpoint (/metrics).
	Addr string

	srv   *http.Server
	ln    net.Listener
	mu    sync.Mutex
	stuck map[string]int // hostname -> count
}

// StartNodeMetrics serves the metrics endpoint on a free loopback port.
func StartNodeMetrics() (*NodeMetrics, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("start node metrics: %w", err)
	}
	m := &NodeMetrics{Addr: ln.Addr().String(), ln: ln, stuck: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", m.serve)
	m.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go m.srv.Serve(ln)
	return m, nil
}

// SetStuck makes VM hostname report n processes stuck on NFS (0 still reports it).
func (m *NodeMetrics) SetStuck(hostname string, n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stuck[hostname] = n
}

// Forget stops reporting hostname.
func (m *NodeMetrics) Forget(hostname string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.stuck, hostname)
}

func (m *NodeMetrics) serve(w http.ResponseWriter, _ *http.Request) {
	m.mu.Lock()
	hosts := make([]string, 0, len(m.stuck))
	for h := range m.stuck {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	var b strings.Builder
	fmt.Fprintf(&b, "# HELP %s Processes stuck on NFS.\n# TYPE %s gauge\n", StuckProcsMetric, StuckProcsMetric)
	for _, h := range hosts {
		fmt.Fprintf(&b, "%s{instance=%q} %d\n", StuckProcsMetric, h+":9100", m.stuck[h])
	}
	m.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	_, _ = w.Write([]byte(b.String()))
}

// Close stops serving.
func (m *NodeMetrics) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return m.srv.Shutdown(ctx)
}

// Prometheus is a running Prometheus server.
type Prometheus struct{ *daemon }

// StartPrometheus starts a Prometheus on a free loopback port scraping target (host:port,
// path /metrics) every second, keeping the target's instance labels, and returns once it
// is ready. Stop kills it and removes its dir.
func StartPrometheus(ctx context.Context, target string) (*Prometheus, error) {
	bin, ok := PrometheusBinary()
	if !ok {
		return nil, fmt.Errorf("start prometheus: %s not found (apt-get install prometheus)", bin)
	}
	sweepDirs(promPrefix)
	var lastErr error
	// A port picked free may be taken before Prometheus binds it: a second try.
	for try := 0; try < 3; try++ {
		p, err := startPrometheus(ctx, bin, target)
		if err == nil {
			return p, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func startPrometheus(ctx context.Context, bin, target string) (p *Prometheus, err error) {
	dir, err := os.MkdirTemp("", promPrefix)
	if err != nil {
		return nil, fmt.Errorf("start prometheus: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	if err := writeOwner(dir); err != nil {
		return nil, fmt.Errorf("start prometheus: %w", err)
	}
	cfg := filepath.Join(dir, "prometheus.yml")
	conf := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: node
    honor_labels: true
    static_configs:
      - targets: [%q]
`, target)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("start prometheus: %w", err)
	}
	port, err := freeLoopbackPort()
	if err != nil {
		return nil, fmt.Errorf("start prometheus: %w", err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	d, err := startDaemon(ctx, "prometheus", bin, dir, addr,
		"--config.file="+cfg,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--log.level=warn",
	)
	if err != nil {
		return nil, err
	}
	return &Prometheus{d}, nil
}

// Query runs the instant query q and returns each sample's value by its instance label.
func (p *Prometheus) Query(ctx context.Context, q string) (map[string]float64, error) {
	client, err := promapi.NewClient(promapi.Config{Address: p.URL})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, _, err := promv1.NewAPI(client).Query(ctx, q, time.Now())
	if err != nil {
		return nil, fmt.Errorf("query %s: %w", q, err)
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, fmt.Errorf("query %s: a %s, not a vector", q, v.Type())
	}
	got := map[string]float64{}
	for _, s := range vec {
		got[string(s.Metric["instance"])] = float64(s.Value)
	}
	return got, nil
}

// WaitQuery waits (up to 30 s) until the instant query q returns exactly the instances
// of want with their values.
func (p *Prometheus) WaitQuery(ctx context.Context, q string, want map[string]float64) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		got, err := p.Query(ctx, q)
		if err == nil && maps.Equal(got, want) {
			return nil
		}
		if serr := sleep(ctx, 200*time.Millisecond); serr != nil {
			return fmt.Errorf("query %s = %v, %v; want %v", q, got, err, want)
		}
	}
}

// LabPrometheus is a real Prometheus scraping the lab's node metrics.
type LabPrometheus struct {
	*Prometheus
	Metrics *NodeMetrics
}

// NeedPrometheus starts the node metrics endpoint and a Prometheus scraping it for the
// test, both stopped when it ends. Without the binary the test is skipped with a
// message, or fails under CI=true.
func NeedPrometheus(t testing.TB) *LabPrometheus {
	t.Helper()
	if bin, ok := PrometheusBinary(); !ok {
		msg := fmt.Sprintf("%s not found: apt-get install prometheus to run this test against a real Prometheus", bin)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	m, err := StartNodeMetrics()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := StartPrometheus(ctx, m.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("stop prometheus: %v", err)
		}
	})
	return &LabPrometheus{Prometheus: p, Metrics: m}
}
