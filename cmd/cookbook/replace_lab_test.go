package main

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/lab"
	"example.com/cookbook/lab/cloud"
)

// TestReplaceNodes: replace-k8s-nodes upgrades the workers' OS by replacing them, end to
// end through the binary in the lab: bad input is exit 2 with one line; --dry-run writes
// nothing; --canary replaces one node and pauses (exit 0, the resume command); resume
// replaces the rest, two at a time (the quota checked first, the sample workload within
// its PDBs throughout): afterwards as many workers as before, every one on the
// new image and Ready with the role's labels, no old server or Node left.
func TestReplaceNodes(t *testing.T) {
	w, s := stackWorld(t, 3, 0)
	prefix := s.Prefix
	const trixie = "debian-13.0-trixie"
	base := []string{"replace-k8s-nodes", "--cluster-name", "toolsbeta"}
	oldNames := []string{prefix + "-worker-1", prefix + "-worker-2", prefix + "-worker-3"}
	roleLabels := map[string]string{}
	for k, v := range nodeOf(t, s, oldNames[0]).Labels {
		if !strings.Contains(k, "hostname") {
			roleLabels[k] = v
		}
	}

	mark := markWrites(s)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"control role kept", []string{"--role", "control", "--image", trixie, "--keep-old"}, "--keep-old: role control is a control role"},
		{"unknown role", []string{"--role", "gpu", "--image", trixie}, "gpu"},
		{"unknown image", []string{"--role", "worker", "--image", "debian-99"}, `--image: image "debian-99": not found`},
		{"max surge 0", []string{"--role", "worker", "--image", trixie, "--max-surge", "0"}, "--max-surge: 0 is not a positive number"},
		{"listed twice", []string{"--role", "worker", "--image", trixie, "--hostname-list", oldNames[0] + "," + oldNames[0]}, "--hostname-list: " + oldNames[0] + " is listed twice"},
	} {
		r := w.run(append(base, tt.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, tt.want) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("%s: exit %d, want 2 and one line with %q:\n%s", tt.name, r.code, tt.want, r.stderr)
		}
	}
	if len(w.runs()) != 0 {
		t.Errorf("bad input recorded %d run(s)", len(w.runs()))
	}

	// The project has room for one more server: enough for the canary, not for two at once.
	used := s.Cloud.Usage()
	s.Cloud.SetQuota(cloud.Quota{Instances: used.Instances + 1, Cores: 400, RAM: 800000})
	quotaShort := fmt.Sprintf("quota: need 2 instances, 1 left of %d", used.Instances+1)

	args := append(base, "--role", "worker", "--image", trixie, "--max-surge", "2", "--force", "--delete-emptydir-data")
	r := w.run(append([]string{"--dry-run"}, args...)...)
	wantCode(t, r, 0)
	for _, want := range []string{
		"DRY-RUN: would create server " + prefix + "-worker-4", "DRY-RUN: would delete server " + oldNames[0],
		"plan: batch 1/2: " + oldNames[0] + " (debian-12.0-bookworm) -> " + prefix + "-worker-4, " + oldNames[1] + " (debian-12.0-bookworm) -> " + prefix + "-worker-5 on " + trixie + ", flavor ",
		"plan: batch 2/2: " + oldNames[2] + " (debian-12.0-bookworm) -> " + prefix + "-worker-6",
		"plan: " + oldNames[0] + ": ", " pod(s) to evict",
		"plan: quota needed at once: 2 instance(s), ", "plan: " + quotaShort,
		"DRY-RUN: the run would stop here: new server(s) " + prefix + "-worker-4, " + prefix + "-worker-5 of flavor ",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("dry-run does not show %q:\n%s", want, r.stderr)
		}
	}
	mark.none(t, "dry-run replace-k8s-nodes")

	// The sample workload stays within its PDBs throughout the replacement.
	stopWeb, stopAPI := minRunningPods(t, s, "sample", "web", 4), minRunningPods(t, s, "sample", "api", 3)
	r = w.run(append(args, "--canary")...)
	wantCode(t, r, 0)
	m := regexp.MustCompile(`continue the same plan with: cookbook resume (\S+)`).FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("canary: no resume command:\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, "progress: 1/3 done, 0 in progress, 2 left, ETA ") {
		t.Errorf("canary: no progress line 1/3 done with an ETA:\n%s", r.stderr)
	}
	if nodeOf(t, s, oldNames[0]) != nil || nodeOf(t, s, oldNames[1]) == nil || nodeOf(t, s, prefix+"-worker-4") == nil {
		t.Fatalf("after the canary: want worker-1 replaced by worker-4, the others left:\n%s", r.stderr)
	}

	// Two new servers at once do not fit: the batch stops before creating any, naming
	// what is missing; with the quota raised, resume goes on.
	before := len(s.Cloud.Servers())
	r = w.run("resume", m[1])
	if r.code == 0 || !strings.Contains(r.stderr, quotaShort) {
		t.Fatalf("resume short of quota: exit %d, want a failure naming %q:\n%s", r.code, quotaShort, r.stderr)
	}
	if n := len(s.Cloud.Servers()); n != before {
		t.Errorf("short of quota: %d servers, want %d (none created)", n, before)
	}
	if n := nodeOf(t, s, oldNames[1]); n == nil || n.Spec.Unschedulable {
		t.Errorf("short of quota: %s cordoned or gone", oldNames[1])
	}
	s.Cloud.SetQuota(cloud.Quota{Instances: used.Instances + 2, Cores: 400, RAM: 800000})
	r = w.run("resume", m[1])
	wantCode(t, r, 0)
	if web, api := stopWeb(), stopAPI(); web < 3 || api < 2 {
		t.Errorf("fewest running pods: web %d (PDB maxUnavailable 1 of 4), api %d (PDB minAvailable 2)", web, api)
	}
	if !strings.Contains(r.stderr, "progress: 3/3 done, 0 in progress, 0 left") {
		t.Errorf("resume: no final progress line 3/3 done:\n%s", r.stderr)
	}

	images := map[string]string{"7b5ac6e3-7a9a-4d1e-9a3c-2c6f1b1d0001": "debian-12.0-bookworm", "7b5ac6e3-7a9a-4d1e-9a3c-2c6f1b1d0002": trixie}
	var workers []string
	for _, srv := range s.Cloud.Servers() {
		if !regexp.MustCompile("^" + prefix + `-worker-[0-9]+$`).MatchString(srv.Name) {
			continue
		}
		workers = append(workers, srv.Name)
		if images[srv.ImageID] != trixie || s.Fleet.VM(srv.ID).Image != trixie {
			t.Errorf("server %s: image %s, VM %s; want %s", srv.Name, images[srv.ImageID], s.Fleet.VM(srv.ID).Image, trixie)
		}
		n := nodeOf(t, s, srv.Name)
		if n == nil || !lab.IsReady(n) {
			t.Errorf("node %s not Ready", srv.Name)
			continue
		}
		for k, v := range roleLabels {
			if n.Labels[k] != v {
				t.Errorf("node %s: label %s=%q, want %q", srv.Name, k, n.Labels[k], v)
			}
		}
	}
	if len(workers) != 3 {
		t.Errorf("workers after the replacement: %v, want 3", workers)
	}
	for _, old := range oldNames {
		if nodeOf(t, s, old) != nil {
			t.Errorf("old node %s is still there", old)
		}
		for _, srv := range s.Cloud.Servers() {
			if srv.Name == old {
				t.Errorf("old server %s is still there", old)
			}
		}
	}
	b, _ := os.ReadFile(s.AuditPath)
	audit := string(b)
	for _, want := range []string{"replace-k8s-nodes of toolsbeta started by ", "replace-k8s-nodes of toolsbeta finished: 3 worker node(s) replaced"} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit log has no %q:\n%s", want, audit)
		}
	}
	if !strings.Contains(audit, "Replaced "+oldNames[0]) || !strings.Contains(audit, "(debian-12.0-bookworm) with "+prefix+"-worker-4") || strings.Count(audit, "Replaced ") != 3 {
		t.Errorf("audit log:\n%s", audit)
	}
}

// TestReplaceKeepOld: --keep-old adds the new nodes and only cordons and drains the old
// ones, labelled with their replacement, then pauses (exit 0); `resume` removes them. A
// second --keep-old run (back to the first image) is finished by a new run without
// --keep-old (and --new), which finds the kept nodes by their label and only removes them. The sample
// workload's web Deployment never loses more than its PDB allows.
func TestReplaceKeepOld(t *testing.T) {
	w, s := stackWorld(t, 2, 0)
	prefix := s.Prefix
	const trixie, bookworm = "debian-13.0-trixie", "debian-12.0-bookworm"
	base := []string{"replace-k8s-nodes", "--cluster-name", "toolsbeta", "--role", "worker", "--max-surge", "2", "--force", "--delete-emptydir-data"}
	workers := func() map[string]string {
		out := map[string]string{}
		images := map[string]string{"7b5ac6e3-7a9a-4d1e-9a3c-2c6f1b1d0001": bookworm, "7b5ac6e3-7a9a-4d1e-9a3c-2c6f1b1d0002": trixie}
		for _, srv := range s.Cloud.Servers() {
			if regexp.MustCompile("^" + prefix + `-worker-[0-9]+$`).MatchString(srv.Name) {
				out[srv.Name] = images[srv.ImageID]
			}
		}
		return out
	}
	// kept checks the old nodes are there, cordoned, drained of the sample workload and
	// labelled with their replacement, and the new ones Ready and schedulable.
	kept := func(old, repl []string) {
		t.Helper()
		for i, o := range old {
			n := nodeOf(t, s, o)
			if n == nil || !n.Spec.Unschedulable || n.Labels["cookbook/replaced-by"] != repl[i] {
				t.Errorf("kept node %s: want there, cordoned, labelled cookbook/replaced-by=%s; got %v", o, repl[i], n)
				continue
			}
			pods, err := s.CP.Client.CoreV1().Pods("sample").List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + o})
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range pods.Items {
				if p.Labels["app"] != lab.SampleWorkload.DaemonSet { // a drain leaves DaemonSet pods
					t.Errorf("kept node %s: pod %s left, want drained", o, p.Name)
				}
			}
			if n := nodeOf(t, s, repl[i]); n == nil || n.Spec.Unschedulable || !lab.IsReady(n) {
				t.Errorf("new node %s not Ready and schedulable", repl[i])
			}
		}
	}
	gone := func(old []string) {
		t.Helper()
		ws := workers()
		for _, o := range old {
			if _, ok := ws[o]; ok || nodeOf(t, s, o) != nil {
				t.Errorf("old node %s: server or Node still there", o)
			}
		}
		if len(ws) != 2 {
			t.Errorf("workers %v, want 2", ws)
		}
		for name := range ws {
			if n := nodeOf(t, s, name); n == nil || n.Spec.Unschedulable || !lab.IsReady(n) {
				t.Errorf("worker %s missing, cordoned or not Ready", name)
			}
		}
	}
	old := []string{prefix + "-worker-1", prefix + "-worker-2"}
	repl := []string{prefix + "-worker-3", prefix + "-worker-4"}

	stopWeb := minRunningPods(t, s, "sample", "web", 4)
	r := w.run(append(base, "--image", trixie, "--keep-old")...)
	wantCode(t, r, 0)
	m := regexp.MustCompile(`--keep-old: .* kept, cordoned and drained, .*continue the same plan with: cookbook resume (\S+)`).FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("--keep-old: no pause naming the kept nodes and the resume command:\n%s", r.stderr)
	}
	if got := workers(); len(got) != 4 || got[repl[0]] != trixie || got[repl[1]] != trixie {
		t.Fatalf("--keep-old: workers %v, want the 2 old and 2 new on %s", got, trixie)
	}
	kept(old, repl)
	r = w.run("resume", m[1])
	wantCode(t, r, 0)
	gone(old)
	if !strings.Contains(r.stderr, "replace-k8s-nodes of toolsbeta finished: 2 worker node(s) replaced") {
		t.Errorf("resume: no end line:\n%s", r.stderr)
	}

	// Back to bookworm, kept again; a new run without --keep-old removes the kept nodes
	// and creates no server.
	r = w.run(append(base, "--image", bookworm, "--keep-old")...)
	wantCode(t, r, 0)
	repl2 := []string{prefix + "-worker-5", prefix + "-worker-6"}
	kept(repl, repl2)
	creates := s.Cloud.Writes()["POST /compute/v2.1/servers"]
	// The paused run would remove them too; a new run (--new: the paused one is left
	// to be abandoned) is the other way.
	r = w.run(append(base, "--image", bookworm, "--keep-old=false", "--new")...)
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, "plan: "+repl[0]+" ("+trixie+") was replaced by "+repl2[0]+" in an earlier --keep-old run: remove it") {
		t.Errorf("the plan does not name the kept node to remove:\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, "finished: 0 worker node(s) replaced, 2 kept by an earlier run removed") {
		t.Errorf("no end line naming the removed kept nodes:\n%s", r.stderr)
	}
	if n := s.Cloud.Writes()["POST /compute/v2.1/servers"]; n != creates {
		t.Errorf("removing kept nodes created %d server(s)", n-creates)
	}
	gone(repl)
	if webMin := stopWeb(); webMin < 3 {
		t.Errorf("web fell to %d running pods; its PDB (maxUnavailable 1) allows 3", webMin)
	}
	b, _ := os.ReadFile(s.AuditPath)
	if c := strings.Count(string(b), "kept after its replacement by"); c != 4 {
		t.Errorf("%d removal audit lines, want 4:\n%s", c, b)
	}
}

// TestReplaceCrashAndFaults kills replace-k8s-nodes with SIGKILL at seeded moments and
// resumes it, round after round (the workers go from one image to the other and back):
// after each round exactly as many workers as before, all on the round's image, Ready and
// schedulable, one server per name, no old server or Node left. Then, with the cloud
// losing the response of the first server create (after the server was made) and failing
// the first delete, then 30% of either at random, a run completes with the same end state
// and logs a retry for each injected failure. COOKBOOK_CRASH_KILLS sets how many
// kills (default 5; 20 is the full run). The second round (and every third after
// it) is a --keep-old one: paused with the old nodes kept, then resumed, killed as well.
func TestReplaceCrashAndFaults(t *testing.T) {
	w, s := stackWorld(t, 2, 0)
	prefix := s.Prefix
	rng := seededRand(t)
	want := 5
	if v := os.Getenv("COOKBOOK_CRASH_KILLS"); v != "" {
		fmt.Sscan(v, &want)
	}
	images := []string{"debian-13.0-trixie", "debian-12.0-bookworm"}
	imageID := map[string]string{"7b5ac6e3-7a9a-4d1e-9a3c-2c6f1b1d0001": images[1], "7b5ac6e3-7a9a-4d1e-9a3c-2c6f1b1d0002": images[0]}
	workerRE := regexp.MustCompile("^" + prefix + `-worker-[0-9]+$`)
	// check verifies the end state of a round onto image; before are the workers it
	// replaced.
	check := func(round string, image string, before map[string]bool) {
		t.Helper()
		count := map[string]int{}
		workers := 0
		for _, srv := range s.Cloud.Servers() {
			count[srv.Name]++
			if !workerRE.MatchString(srv.Name) {
				continue
			}
			workers++
			if before[srv.Name] {
				t.Errorf("%s: old server %s still there", round, srv.Name)
			}
			if imageID[srv.ImageID] != image || s.Fleet.VM(srv.ID).Image != image {
				t.Errorf("%s: server %s on %s (VM %s), want %s", round, srv.Name, imageID[srv.ImageID], s.Fleet.VM(srv.ID).Image, image)
			}
			if n := nodeOf(t, s, srv.Name); n == nil || n.Spec.Unschedulable || !lab.IsReady(n) {
				t.Errorf("%s: node %s missing, cordoned or not Ready", round, srv.Name)
			}
		}
		for name, c := range count {
			if c != 1 {
				t.Errorf("%s: %d servers named %s", round, c, name)
			}
		}
		if workers != 2 {
			t.Errorf("%s: %d workers, want 2: %v", round, workers, keys(count))
		}
		nodes, err := s.CP.Client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes.Items {
			if count[n.Name] != 1 {
				t.Errorf("%s: node %s has no server", round, n.Name)
			}
		}
	}
	workers := func() map[string]bool {
		out := map[string]bool{}
		for _, srv := range s.Cloud.Servers() {
			if workerRE.MatchString(srv.Name) {
				out[srv.Name] = true
			}
		}
		return out
	}
	args := func(image string) []string {
		return []string{"replace-k8s-nodes", "--cluster-name", "toolsbeta", "--role", "worker", "--image", image, "--max-surge", "2", "--force", "--delete-emptydir-data", "--new"}
	}

	start := time.Now()
	total, round := 0, 0
	for ; total < want && round < 10; round++ {
		image := images[round%2]
		before := workers()
		a, keep := args(image), round%3 == 1
		if keep {
			a = append(a, "--keep-old")
		}
		k, id := crash(t, w, rng, min(5, want-total), 6*time.Second, a...)
		total += k
		// A --keep-old round pauses with the old nodes kept (unless a kill at the pause made
		// the harness resume it to the end); resuming it, killed too, removes them.
		if run, _ := (&state.Store{Dir: w.stateDir}).Load(id); keep && run != nil && run.Status == state.Paused {
			now := workers()
			if len(now) != 4 {
				t.Errorf("round %d (--keep-old): workers %v, want the 2 old and 2 new", round, keys2(now))
			}
			for old := range before {
				n := nodeOf(t, s, old)
				if n == nil || !n.Spec.Unschedulable || !now[n.Labels["cookbook/replaced-by"]] || before[n.Labels["cookbook/replaced-by"]] {
					t.Errorf("round %d (--keep-old): old node %s not kept cordoned and labelled with a new worker: %v", round, old, n)
				}
			}
			t.Logf("round %d: --keep-old paused with the old nodes kept; resuming it", round)
			k2, _ := crash(t, w, rng, min(5, max(want-total, 0)), 6*time.Second, "resume", id)
			total += k2
			k += k2
		}
		check(fmt.Sprintf("round %d (%d kills, run %s, keep-old %v)", round, k, id, keep), image, before)
		if t.Failed() {
			t.FailNow()
		}
	}
	if total < want {
		t.Errorf("only %d kills in %d rounds", total, round)
	}
	t.Logf("%d kills in %d rounds, %s", total, round, time.Since(start).Round(time.Second))

	// One round under faults: the first create's response is lost after Nova made the
	// server, and the first delete fails; then 30% of creates (responses lost), of the
	// servers' actions (console output) and of deletes fail at random. Every injected
	// failure shows as a retry in the log and the round ends as one without faults: no
	// second server for a lost create.
	servers := "/compute/v2.1/servers"
	s.Cloud.SetFaults(cloud.Faults{Rules: []cloud.FaultRule{
		{Method: "POST", Path: servers, ErrorRate: 1, After: true, Count: 1},
		{Method: "DELETE", PathPrefix: servers + "/", ErrorRate: 1, Count: 1},
		{Method: "POST", PathPrefix: servers, ErrorRate: 0.3, After: true},
		{Method: "DELETE", PathPrefix: servers + "/", ErrorRate: 0.3},
	}})
	defer s.Cloud.SetFaults(cloud.Faults{})
	injectedBefore := len(s.Cloud.Injected())
	image := images[round%2]
	before := workers()
	r := w.run(args(image)...)
	wantCode(t, r, 0)
	check("with faults", image, before)
	var lostCreates, failedDeletes int
	for _, f := range s.Cloud.Injected()[injectedBefore:] {
		switch {
		case f.Method == "POST" && f.Path == servers:
			lostCreates++
		case f.Method == "DELETE":
			failedDeletes++
		}
	}
	createRetries := regexp.MustCompile(`transient failure, retrying request="create server `+prefix+`-worker-[0-9]+"`).FindAllString(r.stderr, -1)
	deleteRetries := regexp.MustCompile(`transient failure, retrying request="DELETE [^"]*/compute/v2.1/servers/`).FindAllString(r.stderr, -1)
	if lostCreates < 1 || len(createRetries) != lostCreates {
		t.Errorf("%d create responses lost, %d create retries logged; want one each (at least one lost):\n%s", lostCreates, len(createRetries), r.stderr)
	}
	if failedDeletes < 1 || len(deleteRetries) != failedDeletes {
		t.Errorf("%d deletes failed, %d delete retries logged; want one each (at least one failed):\n%s", failedDeletes, len(deleteRetries), r.stderr)
	}
	t.Logf("under faults: %d create responses lost, %d deletes failed, each retried", lostCreates, failedDeletes)
}

func keys2(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
