package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// The lab's Prometheus is Debian's real prometheus, started on a free loopback port with
// its storage in a temp dir of its own, scraping every second one target per host, as
// it scrapes node-exporter on every host of a real cluster: each lab VM serves its own
// /metrics (a NodeExporter on its address, lab/vm's Fleet.MetricsPort) with
// prometheus_k8s_nfs_stuck_total_procs (the Toolforge metric counting processes stuck on
// NFS), so Prometheus labels its samples instance="<address>:<port>". The targets are a
// file_sd file the test rewrites (SetTargets), as service discovery would. It dies with
// the process that started it; a dir a killed owner left behind is swept by the next
// start, like the Alertmanager's.

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

// NodeExporter is one host's node-exporter stand-in: GET /metrics on the host's own
// address answers, in Prometheus' text format, the number of processes stuck on NFS the
// host reports (StuckProcsMetric, without an instance label: Prometheus adds the
// target's).
type NodeExporter struct {
	// Addr is host:port of its endpoint.
	Addr string

	srv   *http.Server
	stuck func() int
}

// StartNodeExporter serves /metrics on addr (host:port; port 0 picks a free one), the
// count of stuck processes read from stuck at each scrape.
func StartNodeExporter(addr string, stuck func() int) (*NodeExporter, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("start node exporter: %w", err)
	}
	e := &NodeExporter{Addr: ln.Addr().String(), stuck: stuck}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", e.serve)
	e.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go e.srv.Serve(ln)
	return e, nil
}

func (e *NodeExporter) serve(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	fmt.Fprintf(w, "# HELP %s Processes stuck on NFS.\n# TYPE %s gauge\n%s %d\n", StuckProcsMetric, StuckProcsMetric, StuckProcsMetric, e.stuck())
}

// Close stops serving at once (a host going down drops its connections).
func (e *NodeExporter) Close() error {
	return e.srv.Close()
}

// Prometheus is a running Prometheus server.
type Prometheus struct{ *daemon }

// StartPrometheus starts a Prometheus on a free loopback port scraping each target
// (host:port, path /metrics; SetTargets changes them) every second, each sample labelled
// instance="host:port", and returns once it is ready. Stop kills it and removes its dir.
func StartPrometheus(ctx context.Context, targets ...string) (*Prometheus, error) {
	bin, ok := PrometheusBinary()
	if !ok {
		return nil, fmt.Errorf("start prometheus: %s not found (apt-get install prometheus)", bin)
	}
	sweepDirs(promPrefix)
	var lastErr error
	// A port picked free may be taken before Prometheus binds it: a second try.
	for try := 0; try < 3; try++ {
		p, err := startPrometheus(ctx, bin, targets)
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

// targetsFile is the file_sd file of the lab Prometheus' node job, in its dir.
const targetsFile = "targets.json"

func startPrometheus(ctx context.Context, bin string, targets []string) (p *Prometheus, err error) {
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
	if err := writeTargets(dir, targets); err != nil {
		return nil, fmt.Errorf("start prometheus: %w", err)
	}
	cfg := filepath.Join(dir, "prometheus.yml")
	conf := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: node
    file_sd_configs:
      - files: [%q]
        refresh_interval: 1s
`, filepath.Join(dir, targetsFile))
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

// SetTargets replaces the hosts Prometheus scrapes (host:port each); it reads the
// file_sd file again within a second or two.
func (p *Prometheus) SetTargets(targets ...string) error {
	return writeTargets(p.Dir, targets)
}

// writeTargets writes the file_sd file in dir: a temp file renamed over it, so that
// Prometheus never reads half of it.
func writeTargets(dir string, targets []string) error {
	if targets == nil {
		targets = []string{}
	}
	b, err := json.Marshal([]map[string]any{{"targets": targets}})
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, targetsFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write prometheus targets: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, targetsFile)); err != nil {
		return fmt.Errorf("write prometheus targets: %w", err)
	}
	return nil
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

// NeedPrometheus starts a Prometheus scraping targets (host:port each: the lab VMs'
// node exporters, Fleet.MetricsTargets; SetTargets changes them) for the test, stopped
// when it ends. Without the binary the test is skipped with a message, or fails under
// CI=true.
func NeedPrometheus(t testing.TB, targets ...string) *Prometheus {
	t.Helper()
	if bin, ok := PrometheusBinary(); !ok {
		msg := fmt.Sprintf("%s not found: apt-get install prometheus to run this test against a real Prometheus", bin)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := StartPrometheus(ctx, targets...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("stop prometheus: %v", err)
		}
	})
	return p
}
