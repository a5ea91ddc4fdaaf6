package stack

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"example.com/cookbook/lab"
)

// BenchmarkListNodes brings up a lab of BENCH_WORKERS workers (200 if unset) and runs the
// real cookbook binary's list-nodes on it: its wall time and peak RSS (getrusage of the
// child), and the peak of its anonymous memory. It also reports how long the lab took to
// come up. Run it with `make bench`.
func BenchmarkListNodes(b *testing.B) {
	if _, ok := lab.BinDir(); !ok {
		lab.Need(b, nil)
	}
	workers := 200
	if v := os.Getenv("BENCH_WORKERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("BENCH_WORKERS=%q: want a number of workers", v)
		}
		workers = n
	}
	bin := filepath.Join(b.TempDir(), "cookbook")
	if out, err := exec.Command("go", "build", "-o", bin, "example.com/cookbook/cmd/cookbook").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	start := time.Now()
	s, err := Up(context.Background(), Options{Dir: b.TempDir(), Workers: workers, NFSWorkers: 2})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Down()
	upTime := time.Since(start)
	nodes := 3 + workers + 2
	b.Logf("lab of %d workers (%d nodes) up in %s", workers, nodes, upTime.Round(100*time.Millisecond))
	var wall time.Duration
	var peak, peakAnon int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		cmd := exec.Command(bin, "--config", s.ConfigPath, "--state-dir", b.TempDir(), "list-nodes", "--cluster-name", s.Cluster)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		anon := sampleAnon(cmd.Process.Pid)
		if err := cmd.Wait(); err != nil {
			b.Fatalf("cookbook list-nodes: %v\n%s", err, stderr.String())
		}
		peakAnon = max(peakAnon, anon())
		took := time.Since(start)
		wall += took
		rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss // kilobytes on Linux
		peak = max(peak, rss)
		if got := strings.Count(stdout.String(), s.Prefix+"-worker-"); got < workers {
			b.Fatalf("list-nodes shows %d workers, want %d:\n%s", got, workers, stdout.String())
		}
		b.Logf("list-nodes of %d nodes: %s, peak RSS %d MB, of it anonymous %d MB", nodes, took.Round(time.Millisecond), rss/1024, peakAnon/1024)
	}
	b.StopTimer()
	b.ReportMetric(float64(workers), "workers")
	b.ReportMetric(upTime.Seconds(), "lab-up-s")
	b.ReportMetric(wall.Seconds()/float64(b.N), "cookbook-s/list-nodes")
	b.ReportMetric(float64(peak)/1024, "peak-RSS-MB")
	b.ReportMetric(float64(peakAnon)/1024, "peak-anon-MB")
	b.ReportMetric(0, "ns/op")
}

// sampleAnon samples the anonymous memory (RssAnon) of process pid every 5 ms until it
// exits; the returned function waits for that and returns the peak in KB.
func sampleAnon(pid int) func() int64 {
	done := make(chan int64, 1)
	go func() {
		var peak int64
		path := fmt.Sprintf("/proc/%d/status", pid)
		for {
			data, err := os.ReadFile(path)
			if err != nil || !strings.Contains(string(data), "RssAnon:") {
				done <- peak
				return
			}
			for _, line := range strings.Split(string(data), "\n") {
				if rest, ok := strings.CutPrefix(line, "RssAnon:"); ok {
					var kb int64
					fmt.Sscan(rest, &kb)
					peak = max(peak, kb)
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return func() int64 { return <-done }
}
