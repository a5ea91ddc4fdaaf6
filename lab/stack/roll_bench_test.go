package stack

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/lab"
)

// envInt reads a positive number from the environment, def if unset.
func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// BenchmarkRollReboot brings up a lab of BENCH_ROLL_WORKERS workers (500 if unset) running
// BENCH_PODS pods (20,000: Deployments of 100 pods, each with a PDB of maxUnavailable 5),
// whose VMs stay down BENCH_REBOOT_SECONDS (20) when they reboot, and runs the real cookbook
// binary's roll-reboot of every worker, 25 at a time, with the default health window (2s).
// It reports, from that one run:
//   - the wall time, and its lower bound: the sum over batches of the slowest node's own
//     drain + reboot + wait for Ready (the "took" of the run's log lines) plus the health
//     window; their ratio;
//   - the overhead per batch and where it goes: nodes waiting for the batch's slowest at
//     the drain, reboot and wait-ready steps (the steps are done by all the batch's nodes
//     together), the health gate beyond its window, the other steps (record-cordon-state,
//     cordon, uncordon, settle, audit), the time between steps (state saves, the runner),
//     and the process's start (configuration, plan) and end;
//   - the cookbook process's peak RSS;
//   - its API requests per node (from the API server's audit log), and how many of them
//     list or watch every object of a kind (cluster-wide, not by node or namespace).
func BenchmarkRollReboot(b *testing.B) {
	if _, ok := lab.BinDir(); !ok {
		lab.Need(b, nil)
	}
	workers := envInt(b, "BENCH_ROLL_WORKERS", 500)
	pods := envInt(b, "BENCH_PODS", 20000)
	reboot := time.Duration(envInt(b, "BENCH_REBOOT_SECONDS", 20)) * time.Second
	const maxUnavailable, window = 25, 2 * time.Second
	bin := filepath.Join(b.TempDir(), "cookbook")
	build := []string{"build", "-o", bin}
	// BENCH_HEAPPROFILE names a file for the cookbook process's heap profile at its peak
	// (`go tool pprof -sample_index inuse_space FILE`).
	heapProfile := os.Getenv("BENCH_HEAPPROFILE")
	if heapProfile != "" {
		build = append(build, "-tags", "heapprofile")
	}
	if out, err := exec.Command("go", append(build, "example.com/cookbook/cmd/cookbook")...).CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	replicas := min(pods, 100)
	work := lab.Workload{Namespace: "workload", Deployments: (pods + replicas - 1) / replicas, Replicas: int32(replicas), MaxUnavailable: 5, PerNamespace: 5}
	start := time.Now()
	var upAt time.Time
	s, err := Up(context.Background(), Options{Dir: b.TempDir(), Workers: workers, NFSWorkers: -1, RebootDownTime: reboot,
		AuditReads: true, Workload: work, Log: benchLog(b, &upAt)})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Down()
	labUp := time.Since(start)
	nodesUp := upAt.Sub(start)
	b.Logf("lab of %d workers up in %s, its %d pods running %s later", workers, nodesUp.Round(100*time.Millisecond), work.Pods(), (labUp - nodesUp).Round(100*time.Millisecond))

	b.ResetTimer()
	stateDir := b.TempDir()
	began := time.Now()
	cmd := exec.Command(bin, "--config", s.ConfigPath, "--state-dir", stateDir, "--yes", "--log-format", "json",
		"roll-reboot", "--cluster-name", s.Cluster, "--all-workers", "--max-unavailable", strconv.Itoa(maxUnavailable),
		"--health-window", window.String(), "--reboot-timeout", "10m")
	if heapProfile != "" {
		cmd.Env = append(os.Environ(), "COOKBOOK_HEAPPROFILE="+heapProfile)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	anon := sampleAnon(cmd.Process.Pid)
	err = cmd.Wait()
	wall := time.Since(began)
	b.StopTimer()
	peakAnon := anon()
	if err != nil {
		b.Fatalf("cookbook roll-reboot: %v\n%s", err, tail(stderr.String(), 40))
	}
	rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss // kilobytes on Linux
	// BENCH_LOG keeps the roll's log for a look.
	if path := os.Getenv("BENCH_LOG"); path != "" {
		if err := os.WriteFile(path, []byte(stderr.String()), 0o644); err != nil {
			b.Error(err)
		}
	}

	runs, errs := (&state.Store{Dir: stateDir}).List()
	if len(errs) > 0 || len(runs) != 1 {
		b.Fatalf("run records: %d, errors %v", len(runs), errs)
	}
	run := runs[0]
	var plan [][]struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(run.Values["roll/plan"], &plan); err != nil {
		b.Fatalf("roll/plan: %v", err)
	}
	took, err := nodeTimes(stderr.String())
	if err != nil {
		b.Fatal(err)
	}
	a := analyse(run, plan, took, began, began.Add(wall), window)
	if a.nodes != workers {
		b.Fatalf("%d nodes in the plan, want %d", a.nodes, workers)
	}

	time.Sleep(2 * time.Second) // the audit log is written asynchronously
	reqs, err := s.CP.Requests(context.Background(), began, "cookbook")
	if err != nil {
		b.Fatal(err)
	}
	byKind := map[string]int{}
	clusterWide := 0
	for _, r := range reqs {
		kind := r.Verb + " " + r.Resource
		if r.Subresource != "" {
			kind += "/" + r.Subresource
		}
		byKind[kind]++
		if (r.Verb == "list" || r.Verb == "watch") && r.Namespace == "" && !strings.Contains(r.RequestURI, "fieldSelector") {
			clusterWide++
		}
	}
	var kinds []string
	for k := range byKind {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool {
		if byKind[kinds[i]] != byKind[kinds[j]] {
			return byKind[kinds[i]] > byKind[kinds[j]]
		}
		return kinds[i] < kinds[j]
	})
	var table strings.Builder
	fmt.Fprintf(&table, "API requests by type (verb resource: total, per node, per batch):")
	for _, k := range kinds {
		fmt.Fprintf(&table, "\n  %-32s %6d %7.2f %7.2f", k, byKind[k], float64(byKind[k])/float64(workers), float64(byKind[k])/float64(a.batches))
	}

	b.Logf("roll-reboot of %d workers (%d pods), %d at a time, reboot %s, window %s: wall %s, lower bound %s (ratio %.3f); overhead per batch %.2fs: %s",
		workers, work.Pods(), maxUnavailable, reboot, window, wall.Round(10*time.Millisecond), a.lower.Round(10*time.Millisecond),
		wall.Seconds()/a.lower.Seconds(), a.overhead().Seconds()/float64(a.batches), a.where())
	b.Logf("per batch: slowest node's drain %.2fs, reboot %.2fs, Ready %.2fs (averages over batches)", a.drain.Seconds()/float64(a.batches), a.reboot.Seconds()/float64(a.batches), a.ready.Seconds()/float64(a.batches))
	b.Logf("peak RSS %d MB (anonymous %d MB); API requests %d (%.1f per node), %d cluster-wide lists or watches",
		rss/1024, peakAnon/1024, len(reqs), float64(len(reqs))/float64(workers), clusterWide)
	b.Log(table.String())

	b.ReportMetric(float64(workers), "workers")
	b.ReportMetric(float64(work.Pods()), "pods")
	b.ReportMetric(nodesUp.Seconds(), "lab-up-s")
	b.ReportMetric((labUp - nodesUp).Seconds(), "workload-up-s")
	b.ReportMetric(wall.Seconds(), "wall-s")
	b.ReportMetric(a.lower.Seconds(), "lower-bound-s")
	b.ReportMetric(wall.Seconds()/a.lower.Seconds(), "ratio")
	b.ReportMetric(a.overhead().Seconds()/float64(a.batches), "overhead-s/batch")
	for _, p := range a.parts() {
		b.ReportMetric(p.d.Seconds()/float64(a.batches), p.name+"-s/batch")
	}
	b.ReportMetric(float64(rss)/1024, "peak-RSS-MB")
	b.ReportMetric(float64(peakAnon)/1024, "peak-anon-MB")
	b.ReportMetric(float64(len(reqs))/float64(workers), "requests/node")
	b.ReportMetric(float64(clusterWide), "cluster-wide-lists")
	// Per type, as "VERB-RESOURCE[-SUBRESOURCE]-req/node" (make bench prints them).
	for _, k := range kinds {
		b.ReportMetric(float64(byKind[k])/float64(workers), strings.NewReplacer(" ", "-", "/", "-").Replace(k)+"-req/node")
	}
	b.ReportMetric(0, "ns/op")
}

// benchLog logs the lab's progress to the benchmark's log, and records in upAt when the
// nodes were up (the workload applied next).
func benchLog(b *testing.B, upAt *time.Time) *slog.Logger {
	return slog.New(funcHandler(func(r slog.Record) {
		if r.Message == "applying the workload" {
			*upAt = time.Now()
		}
		if strings.HasPrefix(r.Message, "workload") || r.Message == "applying the workload" {
			var attrs []string
			r.Attrs(func(a slog.Attr) bool { attrs = append(attrs, a.String()); return true })
			b.Logf("lab: %s %s", r.Message, strings.Join(attrs, " "))
		}
	}))
}

// funcHandler is a slog handler that hands each record to a function.
type funcHandler func(slog.Record)

func (h funcHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h funcHandler) Handle(_ context.Context, r slog.Record) error {
	h(r)
	return nil
}
func (h funcHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h funcHandler) WithGroup(string) slog.Handler      { return h }

// nodeTimes reads the roll's JSON log lines "node N: drained|rebooted|Ready" and their
// "took": the time each node itself spent in its drain, its reboot, its wait for Ready.
func nodeTimes(log string) (map[string]map[string]time.Duration, error) {
	out := map[string]map[string]time.Duration{}
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) != nil {
			continue
		}
		msg, _ := line["msg"].(string)
		took, ok := line["took"]
		if !ok || !strings.HasPrefix(msg, "node ") {
			continue
		}
		node, what, ok := strings.Cut(strings.TrimPrefix(msg, "node "), ": ")
		if !ok {
			continue
		}
		var d time.Duration
		switch t := took.(type) {
		case string:
			var err error
			if d, err = time.ParseDuration(t); err != nil {
				return nil, fmt.Errorf("log line %q: took %q: %w", msg, t, err)
			}
		case float64:
			d = time.Duration(t)
		}
		if out[node] == nil {
			out[node] = map[string]time.Duration{}
		}
		out[node][what] += d
	}
	return out, sc.Err()
}

// analysis is a roll's wall time taken apart.
type analysis struct {
	nodes, batches       int
	wall, lower          time.Duration
	drain, reboot, ready time.Duration // the slowest node's own, summed over batches
	barrier              time.Duration // nodes waiting for the batch's slowest
	gateOver             time.Duration // the health gates beyond their window
	otherSteps           time.Duration
	between              time.Duration // between steps: state saves, the runner
	startEnd             time.Duration // before the first step and after the last
}

func analyse(run *state.Run, plan [][]struct {
	Name string `json:"name"`
}, took map[string]map[string]time.Duration, began, ended time.Time, window time.Duration) *analysis {
	a := &analysis{batches: len(plan), wall: ended.Sub(began)}
	for _, batch := range plan {
		var slowest, sd, sr, sy time.Duration
		for _, n := range batch {
			a.nodes++
			t := took[n.Name]
			own := t["drained"] + t["rebooted"] + t["Ready"]
			if own > slowest {
				slowest, sd, sr, sy = own, t["drained"], t["rebooted"], t["Ready"]
			}
		}
		a.lower += slowest + window
		a.drain += sd
		a.reboot += sr
		a.ready += sy
	}
	var stepped, first, last time.Time
	lockstep := map[int]time.Duration{} // batch -> drain + reboot + wait-ready steps
	for _, st := range run.Steps {
		if st.StartedAt == nil || st.EndedAt == nil {
			continue
		}
		if first.IsZero() {
			first = *st.StartedAt
		}
		if !stepped.IsZero() {
			a.between += st.StartedAt.Sub(stepped)
		}
		stepped, last = *st.EndedAt, *st.EndedAt
		d := st.EndedAt.Sub(*st.StartedAt)
		var batch int
		name := st.Name
		if _, err := fmt.Sscanf(st.Name, "batch-%d/", &batch); err == nil {
			name = st.Name[strings.Index(st.Name, "/")+1:]
		}
		switch name {
		case "drain", "reboot", "wait-ready":
			lockstep[batch] += d
		case "health-gate":
			a.gateOver += d - window
		default:
			a.otherSteps += d
		}
	}
	for _, d := range lockstep {
		a.barrier += d
	}
	a.barrier -= a.drain + a.reboot + a.ready
	a.startEnd = first.Sub(began) + ended.Sub(last)
	return a
}

func (a *analysis) overhead() time.Duration { return a.wall - a.lower }

type part struct {
	name string
	d    time.Duration
}

func (a *analysis) parts() []part {
	return []part{{"barrier", a.barrier}, {"gate-over-window", a.gateOver}, {"other-steps", a.otherSteps},
		{"between-steps", a.between}, {"start-end", a.startEnd}}
}

func (a *analysis) where() string {
	var out []string
	for _, p := range a.parts() {
		out = append(out, fmt.Sprintf("%s %.2fs", p.name, p.d.Seconds()/float64(a.batches)))
	}
	return strings.Join(out, ", ")
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
