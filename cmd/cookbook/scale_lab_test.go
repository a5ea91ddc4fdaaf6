package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"example.com/cookbook/lab"
)

// TestRollReboot200Workers brings up a lab of 200 workers with a workload of Deployments
// under PDBs and roll-reboots every worker 50 at a time: every worker's boot id changed,
// no PDB violated (the fewest Running pods of each Deployment at any moment), never more
// than 50 nodes unschedulable, nothing left cordoned.
func TestRollReboot200Workers(t *testing.T) {
	if testing.Short() {
		t.Skip("a 200-worker lab")
	}
	start := time.Now()
	w, s := stackWorld(t, 200, -1)
	ctx := context.Background()
	work := lab.Workload{Namespace: "fleet", Deployments: 20, Replicas: 20, MaxUnavailable: 2}
	if err := s.CP.ApplyWorkload(ctx, work); err != nil {
		t.Fatal(err)
	}
	if err := s.CP.WaitWorkload(ctx, work, 5*time.Minute, nil); err != nil {
		t.Fatal(err)
	}
	up := time.Since(start)
	boot := map[string]string{}
	for _, srv := range s.Cloud.Servers() {
		boot[srv.Name] = s.Fleet.VM(srv.ID).BootID()
	}
	var fewest []func() int
	for i := 0; i < work.Deployments; i++ {
		fewest = append(fewest, minRunningPods(t, s, work.Namespace, work.Name(i), int(work.Replicas)))
	}
	stopWeb := minRunningPods(t, s, "sample", "web", 4)
	cw := watchCluster(t, s)
	rollStart := time.Now()
	r := w.run("roll-reboot", "--cluster-name", "toolsbeta", "--all-workers", "--max-unavailable", "50",
		"--force", "--delete-emptydir-data", "--health-window", "1s")
	roll := time.Since(rollStart)
	maxUnsched := cw.finish()
	wantCode(t, r, 0)
	workers := 0
	for _, srv := range s.Cloud.Servers() {
		changed := s.Fleet.VM(srv.ID).BootID() != boot[srv.Name]
		isWorker := strings.Contains(srv.Name, "-worker-")
		if isWorker {
			workers++
		}
		if changed != isWorker {
			t.Errorf("%s: boot id changed = %v, want %v", srv.Name, changed, isWorker)
		}
		if n := nodeOf(t, s, srv.Name); n == nil || n.Spec.Unschedulable {
			t.Errorf("%s left cordoned (or gone)", srv.Name)
		}
	}
	if workers != 200 {
		t.Errorf("%d workers, want 200", workers)
	}
	if maxUnsched > 50 {
		t.Errorf("%d nodes were unschedulable at once; --max-unavailable 50", maxUnsched)
	}
	for i, stop := range fewest {
		if got, least := stop(), int(work.Replicas-work.MaxUnavailable); got < least {
			t.Errorf("%s fell to %d Running pods; its PDB (maxUnavailable %d) allows %d", work.Name(i), got, work.MaxUnavailable, least)
		}
	}
	if got := stopWeb(); got < 3 {
		t.Errorf("sample/web fell to %d Running pods; its PDB (maxUnavailable 1) allows 3", got)
	}
	if !strings.Contains(r.stderr, "progress: 200/200 done") {
		t.Errorf("no final progress line:\n%s", lastLines(r.stderr, 20))
	}
	var steps []string
	for _, st := range w.runs()[0].Steps {
		if st.StartedAt != nil && st.EndedAt != nil {
			steps = append(steps, fmt.Sprintf("%s %s", st.Name, st.EndedAt.Sub(*st.StartedAt).Round(10*time.Millisecond)))
		}
	}
	t.Logf("steps: %s", strings.Join(steps, ", "))
	t.Logf("lab of 200 workers and %d pods up in %s; roll-reboot of 200 workers, 50 at a time, in %s", work.Pods(), up.Round(100*time.Millisecond), roll.Round(100*time.Millisecond))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprint(strings.Join(lines, "\n"))
}
