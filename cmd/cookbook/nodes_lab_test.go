package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"

	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/lab"
	"example.com/cookbook/lab/stack"
)

// stackWorld is a world whose configuration is a whole lab: control plane, cloud, VMs.
func stackWorld(t *testing.T, workers, nfs int) (*world, *stack.Stack) {
	t.Helper()
	return stackWorldOf(t, stack.Options{Controls: 1, Workers: workers, NFSWorkers: nfs})
}

// stackWorldOf is stackWorld with the lab shaped by opts (its directory and times are
// the tests', but a RebootDownTime opts sets).
func stackWorldOf(t *testing.T, opts stack.Options) (*world, *stack.Stack) {
	t.Helper()
	if _, ok := lab.BinDir(); !ok {
		lab.Need(t, nil)
	}
	opts.Dir, opts.SampleWorkload = t.TempDir(), true
	if opts.RebootDownTime == 0 {
		opts.RebootDownTime = 500 * time.Millisecond
	}
	opts.BuildTime, opts.CloudInitTime = 300*time.Millisecond, 700*time.Millisecond
	s, err := stack.Up(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Down() })
	// Start from a settled cluster: every pod of the sample workload Running.
	err = wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		deps, err := s.CP.Client.AppsV1().Deployments("sample").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, d := range deps.Items {
			if d.Status.ReadyReplicas != *d.Spec.Replicas || d.Status.UpdatedReplicas != *d.Spec.Replicas {
				return false, nil
			}
		}
		pods, err := s.CP.Client.CoreV1().Pods("sample").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, p := range pods.Items {
			if p.Status.Phase != corev1.PodRunning {
				return false, nil
			}
		}
		return len(deps.Items) == 3 && len(pods.Items) > 10, nil
	})
	if err != nil {
		t.Fatalf("sample workload not running: %v", err)
	}
	w := newWorld(t)
	w.config = s.ConfigPath
	return w, s
}

func nodeOf(t *testing.T, s *stack.Stack, name string) *corev1.Node {
	t.Helper()
	n, err := s.CP.Client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return n
}

// commandsOn returns the commands (joined argv) the VM ran, in order.
func commandsOn(s *stack.Stack, vm string) []string {
	var out []string
	for _, r := range s.Fleet.History() {
		if r.VM == vm {
			out = append(out, strings.Join(r.Argv, " "))
		}
	}
	return out
}

func TestAddAndRemoveNodes(t *testing.T) {
	w, s := stackWorld(t, 1, 1)
	prefix := s.Prefix

	// A dry-run changes nothing in the cloud.
	before := s.Cloud.TotalWrites()
	r := w.run("--dry-run", "add-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker")
	wantCode(t, r, 0)
	if s.Cloud.TotalWrites() != before || !strings.Contains(r.stderr, "DRY-RUN: would create server "+prefix+"-worker-2") {
		t.Fatalf("dry-run: %d cloud writes; output:\n%s", s.Cloud.TotalWrites()-before, r.stderr)
	}
	// Every write the rehearsal skips is counted: those of the server it only imagined too.
	wantSkippedCounted(t, "dry-run add-k8s-node", r)

	// A role without nodes selects nothing to reboot: bad input that says so.
	r = w.run("--dry-run", "roll-reboot", "--cluster-name", "toolsbeta", "--role", "ingress")
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "no node of cluster toolsbeta matches --role ingress (its nodes are named "+prefix+"-ingress-N)") {
		t.Errorf("roll-reboot of an empty role:\n%s", r.stderr)
	}

	// A flavor that does not exist is bad input: exit 2, the flavors there are, no run.
	r = w.run("add-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker", "--flavor", "g9.huge")
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, `--flavor: flavor "g9.huge": not found (there are: `) || len(w.runs()) != 0 || s.Cloud.TotalWrites() != before {
		t.Fatalf("bad flavor: %d runs, %d cloud writes:\n%s", len(w.runs()), s.Cloud.TotalWrites()-before, r.stderr)
	}

	for _, role := range []string{"worker", "worker-nfs"} {
		r := w.run("add-k8s-node", "--cluster-name", "toolsbeta", "--role", role)
		wantCode(t, r, 0)
		name := fmt.Sprintf("%s-%s-2", prefix, role)
		n := nodeOf(t, s, name)
		if n == nil || !lab.IsReady(n) {
			t.Fatalf("node %s not Ready after add-k8s-node:\n%s", name, r.stderr)
		}
		if role == "worker-nfs" && (n.Labels["toolforge.org/nfs-mounted"] != "true" || n.Labels["kubernetes.wmcloud.org/nfs-mounted"] != "true") {
			t.Errorf("labels of %s = %v", name, n.Labels)
		}
		// In the role's server group.
		var srvID string
		for _, srv := range s.Cloud.Servers() {
			if srv.Name == name {
				srvID = srv.ID
			}
		}
		inGroup := false
		for _, g := range s.Cloud.Groups() {
			if g.Name == prefix+"-"+role {
				for _, m := range g.Members {
					inGroup = inGroup || m == srvID
				}
			}
		}
		if !inGroup {
			t.Errorf("server %s is not in server group %s-%s", name, prefix, role)
		}
		// Provisioning ran in order, then the reboot, then the join.
		var got []string
		for _, c := range commandsOn(s, name) {
			for _, want := range []string{"apt-get update", "apt-get install -y kubeadm kubelet containerd", "apt-get install -y nfs-common", "systemctl reboot", "kubeadm join"} {
				if strings.HasPrefix(c, want) || strings.HasPrefix(c, "sudo -n -- "+want) {
					got = append(got, want)
				}
			}
		}
		want := []string{"apt-get update", "apt-get install -y kubeadm kubelet containerd", "systemctl reboot", "kubeadm join"}
		if role == "worker-nfs" {
			want = []string{"apt-get update", "apt-get install -y kubeadm kubelet containerd", "apt-get install -y nfs-common", "systemctl reboot", "kubeadm join"}
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("commands on %s (-want +got):\n%s", name, diff)
		}
	}
	// list-nodes --output json: each server of the cluster next to its node.
	r = w.run("list-nodes", "--cluster-name", "toolsbeta", "--output", "json")
	wantCode(t, r, 0)
	var listed struct {
		Schema string `json:"schema"`
		Nodes  []struct {
			Name, Role, Server, Flavor, Image, Address string
			Node                                       *struct {
				Ready, Cordoned bool
				KubeletVersion  string
			}
		} `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &listed); err != nil || listed.Schema != "cookbook.nodes/v1" {
		t.Fatalf("list-nodes --output json: %v\n%s", err, r.stdout)
	}
	found := false
	for _, n := range listed.Nodes {
		if n.Name == prefix+"-worker-nfs-2" {
			found = n.Role == "worker-nfs" && n.Server == "ACTIVE" && n.Address != "" && n.Image != "" && n.Node != nil && n.Node.Ready && !n.Node.Cordoned && n.Node.KubeletVersion != ""
		}
	}
	if !found {
		t.Errorf("list-nodes --output json lacks the new worker-nfs-2, ready:\n%s", r.stdout)
	}
	audit, _ := os.ReadFile(s.AuditPath)
	if !strings.Contains(string(audit), "Added a new k8s worker-nfs "+prefix+"-worker-nfs-2 to the cluster toolsbeta") {
		t.Errorf("audit log:\n%s", audit)
	}

	// The host key pinned from worker-2's console was learned; removing worker-2 forgets
	// it, and the next server of that name is trusted with its own key only.
	worker2 := prefix + "-worker-2"
	first := learnedKeys(t, w, s, worker2)
	if len(first) != 1 {
		t.Fatalf("learned keys of %s after add-k8s-node: %v", worker2, first)
	}
	wantCode(t, w.run("--yes", "remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker", "--hostname-to-remove", worker2, "--force", "--delete-emptydir-data"), 0)
	if left := learnedLines(t, w, first[0].host); len(left) != 0 {
		t.Errorf("known_hosts still has %s after its removal: %v", worker2, left)
	}
	wantCode(t, w.run("add-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker"), 0)
	second := learnedKeys(t, w, s, worker2)
	if len(second) != 1 || second[0].line == first[0].line {
		t.Fatalf("learned keys of the new %s: %v (the old server's: %v)", worker2, second, first)
	}
	// A later run, without a pin, connects to it through the learned key.
	wantCode(t, w.run("roll-reboot", "--cluster-name", "toolsbeta", "--hostname-list", worker2, "--force", "--delete-emptydir-data"), 0)

	// Remove: without a terminal and without --yes, the confirmation aborts.
	r = w.run("remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker")
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "Remove node "+prefix+"-worker-1") {
		t.Errorf("confirmation does not name the node:\n%s", r.stderr)
	}
	r = w.run("--yes", "remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker", "--force", "--delete-emptydir-data")
	wantCode(t, r, 0)
	victim := prefix + "-worker-1"
	if nodeOf(t, s, victim) != nil {
		t.Errorf("node %s still in Kubernetes", victim)
	}
	for _, srv := range s.Cloud.Servers() {
		if srv.Name == victim {
			t.Errorf("server %s still in the cloud", victim)
		}
	}
	if cmds := commandsOn(s, victim); len(cmds) == 0 || !strings.Contains(cmds[len(cmds)-1], "kubeadm reset -f") {
		t.Errorf("kubeadm reset did not run on %s: %v", victim, cmds)
	}
	// The last node of a role is not removed without --force-removal.
	r = w.run("--yes", "remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker")
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "would leave 0 node(s) of role worker") {
		t.Errorf("refusal:\n%s", r.stderr)
	}
}

type learned struct{ host, line string }

// learnedKeys returns the lines of the run's learned known_hosts for server name's
// address (the lab cluster connects to addresses).
func learnedKeys(t *testing.T, w *world, s *stack.Stack, name string) []learned {
	t.Helper()
	addr := ""
	for _, srv := range s.Cloud.Servers() {
		if srv.Name == name {
			addr = srv.Address
		}
	}
	if addr == "" {
		t.Fatalf("server %s has no address", name)
	}
	var out []learned
	for _, l := range learnedLines(t, w, addr) {
		out = append(out, learned{host: addr, line: l})
	}
	return out
}

// learnedLines returns the learned known_hosts lines whose host field names addr (on any port).
func learnedLines(t *testing.T, w *world, addr string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(w.stateDir, "known_hosts"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		host, _, _ := strings.Cut(l, " ")
		for _, h := range strings.Split(host, ",") {
			if h == addr || strings.HasPrefix(h, "["+addr+"]:") {
				out = append(out, l)
			}
		}
	}
	return out
}

// watchCluster records, while a rolling job runs, the most nodes unschedulable at once and
// whether any PodDisruptionBudget had fewer healthy pods than it allows... disruptions.
type clusterWatch struct {
	mu            sync.Mutex
	maxUnsched    int
	pdbViolations []string
	stop          func()
	done          chan struct{}
}

func watchCluster(t *testing.T, s *stack.Stack) *clusterWatch {
	ctx, cancel := context.WithCancel(context.Background())
	cw := &clusterWatch{stop: cancel, done: make(chan struct{})}
	nw, err := s.CP.Client.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		unsched := map[string]bool{}
		for ev := range nw.ResultChan() {
			n, ok := ev.Object.(*corev1.Node)
			if !ok {
				continue
			}
			unsched[n.Name] = ev.Type != watch.Deleted && n.Spec.Unschedulable
			c := 0
			for _, u := range unsched {
				if u {
					c++
				}
			}
			cw.mu.Lock()
			if c > cw.maxUnsched {
				cw.maxUnsched = c
			}
			cw.mu.Unlock()
		}
	}()
	go func() { wg.Wait(); close(cw.done) }()
	return cw
}

func (cw *clusterWatch) finish() int {
	cw.stop()
	<-cw.done
	cw.mu.Lock()
	defer cw.mu.Unlock()
	return cw.maxUnsched
}

func TestRollRebootAllWorkers(t *testing.T) {
	w, s := stackWorld(t, 4, 2)
	ctx := context.Background()
	admin := s.Prefix + "-worker-3"
	if _, err := s.CP.Client.CoreV1().Nodes().Patch(ctx, admin, "application/merge-patch+json", []byte(`{"spec":{"unschedulable":true}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	boot := map[string]string{}
	for _, srv := range s.Cloud.Servers() {
		boot[srv.Name] = s.Fleet.VM(srv.ID).BootID()
	}
	stopWeb := minRunningPods(t, s, "sample", "web", 4)
	cw := watchCluster(t, s)
	r := w.run("roll-reboot", "--cluster-name", "toolsbeta", "--all-workers", "--max-unavailable", "2", "--force", "--delete-emptydir-data")
	maxUnsched := cw.finish()
	webMin := stopWeb()
	wantCode(t, r, 0)
	for _, srv := range s.Cloud.Servers() {
		changed := s.Fleet.VM(srv.ID).BootID() != boot[srv.Name]
		isWorker := strings.Contains(srv.Name, "-worker-")
		if changed != isWorker {
			t.Errorf("%s: boot id changed = %v, want %v", srv.Name, changed, isWorker)
		}
	}
	if n := nodeOf(t, s, admin); n == nil || !n.Spec.Unschedulable {
		t.Errorf("%s, cordoned by an admin before the run, was uncordoned", admin)
	}
	for _, srv := range s.Cloud.Servers() {
		if n := nodeOf(t, s, srv.Name); srv.Name != admin && n != nil && n.Spec.Unschedulable {
			t.Errorf("%s left cordoned", srv.Name)
		}
	}
	if maxUnsched > 2 {
		t.Errorf("%d nodes were unschedulable at once; --max-unavailable 2", maxUnsched)
	}
	if webMin < 3 {
		t.Errorf("web fell to %d running pods; its PDB (maxUnavailable 1) allows 3", webMin)
	}
	if !strings.Contains(r.stderr, "progress: 6/6 done") {
		t.Errorf("no final progress line:\n%s", r.stderr)
	}
	// The log reads in a 120-column tmux pane, without colour codes when piped.
	if strings.Contains(r.stderr, "\x1b[") {
		t.Errorf("colour codes in a piped log:\n%q", r.stderr)
	}
	for _, l := range longLines(r.stderr, 120) {
		t.Errorf("log line of %d columns (more than 120): %s", len([]rune(l)), l)
	}
	run := w.runs()[0]
	r = w.run("runs", "show", run.ID)
	if !strings.Contains(r.stdout, "[batch-1]") || !strings.Contains(r.stdout, "batch-3/health-gate") {
		t.Errorf("runs show:\n%s", r.stdout)
	}
}

// longLines returns the lines of a log longer than width columns. Exceptions, named: the
// lines that list the nodes of a batch of more than one (the plan, and the start of each
// step of such a batch: "cordon A, B"), and the line that names the run's log file.
func longLines(log string, width int) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		nodeList := regexp.MustCompile(`toolsbeta-test-k8s-[a-z-]+-[0-9]+, toolsbeta-test-k8s-`).MatchString(l)
		if len([]rune(l)) <= width || strings.Contains(l, "log=") || nodeList {
			continue
		}
		out = append(out, l)
	}
	return out
}

// minRunningPods records the fewest running pods of app at once, once want were seen.
func minRunningPods(t *testing.T, s *stack.Stack, ns, app string, want int) func() int {
	t.Helper()
	stop, err := s.CP.WatchFewestRunning(context.Background(), ns, app, want)
	if err != nil {
		t.Fatal(err)
	}
	return stop
}

// crash runs args, killing the process with SIGKILL at seeded random moments and
// resuming, until the run is done. It returns the number of kills and the run id.
func crash(t *testing.T, w *world, rng *rand.Rand, maxKills int, maxDelay time.Duration, args ...string) (int, string) {
	t.Helper()
	return crashResumingWith(t, w, rng, maxKills, maxDelay, nil, args...)
}

// crashResumingWith is crash with global flags for each `cookbook resume` (e.g. --yes,
// which a resume does not take from the run it continues).
func crashResumingWith(t *testing.T, w *world, rng *rand.Rand, maxKills int, maxDelay time.Duration, resumeFlags []string, args ...string) (int, string) {
	t.Helper()
	kills := 0
	id := ""
	last := ""
	before := map[string]bool{}
	for _, r := range w.runs() {
		before[r.ID] = true
	}
	for attempt := 0; attempt < 50; attempt++ {
		var cmd *exec.Cmd
		if id == "" {
			cmd = w.command(args...)
		} else {
			cmd = w.command(append(append([]string(nil), resumeFlags...), "resume", id)...)
		}
		var out strings.Builder
		cmd.Stderr = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var err error
		if kills < maxKills {
			select {
			case err = <-done:
			case <-time.After(time.Duration(rng.Int63n(int64(maxDelay)))):
				cmd.Process.Signal(syscall.SIGKILL)
				<-done
				err = fmt.Errorf("killed")
				kills++
			}
		} else {
			err = <-done
		}
		last = out.String()
		runs := w.runs() // fails the test if a state file is unreadable
		for _, r := range runs {
			if id == "" && !before[r.ID] {
				id = r.ID
			}
		}
		if err == nil {
			return kills, id
		}
		// A kill can land after the run saved its final state and before the
		// process exited: the run is then done, and there is nothing to resume.
		if id != "" {
			if r, _ := (&state.Store{Dir: w.stateDir}).Load(id); r != nil && r.Status == state.Done {
				return kills, id
			}
		}
		if err.Error() != "killed" {
			if id == "" {
				t.Fatalf("%v failed before recording a run: %v\n%s", args, err, out.String())
			}
			if r, _ := (&state.Store{Dir: w.stateDir}).Load(id); r != nil && r.Status == state.Failed {
				t.Fatalf("run %s failed (not killed): %s\n%s", id, r.Error, out.String())
			}
		}
	}
	t.Fatalf("%v did not finish; last attempt:\n%s", args, last)
	return kills, id
}

func seededRand(t *testing.T) *rand.Rand {
	seed := time.Now().UnixNano()
	if s := os.Getenv("COOKBOOK_TEST_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	t.Logf("seed %d (set COOKBOOK_TEST_SEED to replay)", seed)
	return rand.New(rand.NewSource(seed))
}

// TestCrashAndResume kills each node cookbook at 20 or more seeded moments, inside and
// between steps, and resumes it: the end state is an uninterrupted run's.
func TestCrashAndResume(t *testing.T) {
	w, s := stackWorld(t, 2, 1)
	rng := seededRand(t)
	prefix := s.Prefix

	t.Run("add-k8s-node", func(t *testing.T) {
		total := 0
		for i := 2; total < 20 && i < 20; i++ {
			k, _ := crash(t, w, rng, 6, 1500*time.Millisecond, "add-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker")
			total += k
			name := fmt.Sprintf("%s-worker-%d", prefix, i)
			n := nodeOf(t, s, name)
			if n == nil || !lab.IsReady(n) {
				t.Fatalf("%s not Ready after the crashes", name)
			}
		}
		if total < 20 {
			t.Errorf("only %d kills", total)
		}
		count := map[string]int{}
		for _, srv := range s.Cloud.Servers() {
			count[srv.Name]++
		}
		for name, c := range count {
			if c != 1 {
				t.Errorf("%d servers named %s", c, name)
			}
		}
		t.Logf("%d kills; servers: %v", total, keys(count))
	})

	t.Run("roll-reboot", func(t *testing.T) {
		total := 0
		for round := 0; total < 20 && round < 6; round++ {
			k, _ := crash(t, w, rng, 8, 4*time.Second, "roll-reboot", "--cluster-name", "toolsbeta", "--all-workers", "--max-unavailable", "2", "--force", "--delete-emptydir-data", "--new")
			total += k
			for _, srv := range s.Cloud.Servers() {
				if n := nodeOf(t, s, srv.Name); n == nil || n.Spec.Unschedulable || !lab.IsReady(n) {
					t.Fatalf("after round %d: node %s is missing, cordoned or not Ready", round, srv.Name)
				}
			}
		}
		if total < 20 {
			t.Errorf("only %d kills", total)
		}
	})

	t.Run("remove-k8s-node", func(t *testing.T) {
		total := 0
		for total < 20 {
			var workers []string
			for _, srv := range s.Cloud.Servers() {
				if strings.HasPrefix(srv.Name, prefix+"-worker-") && !strings.Contains(srv.Name, "nfs") {
					workers = append(workers, srv.Name)
				}
			}
			if len(workers) < 2 {
				// Add one back (not killed) to have something to remove.
				wantCode(t, w.run("add-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker"), 0)
				continue
			}
			sort.Slice(workers, func(i, j int) bool { return lessByNumber(workers[i], workers[j]) })
			victim := workers[0]
			k, _ := crash(t, w, rng, 5, 1500*time.Millisecond, "--yes", "remove-k8s-node", "--cluster-name", "toolsbeta", "--role", "worker", "--force", "--delete-emptydir-data")
			total += k
			if nodeOf(t, s, victim) != nil {
				t.Fatalf("node %s still there", victim)
			}
			for _, srv := range s.Cloud.Servers() {
				if srv.Name == victim {
					t.Fatalf("server %s still there", victim)
				}
			}
		}
	})
}

func keys(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func lessByNumber(a, b string) bool {
	na, nb := 0, 0
	fmt.Sscan(a[strings.LastIndex(a, "-")+1:], &na)
	fmt.Sscan(b[strings.LastIndex(b, "-")+1:], &nb)
	return na < nb
}
