package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"example.com/cookbook/cookbooks"
	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/lab"
)

// cp is the lab control plane shared by the tests that need a real cluster.
var cp *lab.ControlPlane

func TestMain(m *testing.M) {
	if os.Getenv("COOKBOOK_TEST_CHILD") == "1" {
		os.Exit(realMain(os.Args, os.Stdin, os.Stderr, append(cookbooks.All(), toy())))
	}
	os.Exit(lab.RunTests(m, &cp))
}

const toyConfig = `
clusters:
  lab1:
    openstack: {cloud: lab}
    ssh: {user: root}
    roles:
      worker: {prefix: lab1-worker}
`

// world is a state dir, a config and a toy work dir for one test.
type world struct {
	t        testing.TB
	stateDir string
	config   string
	dir      string
	env      []string // more environment for the cookbook processes
}

func newWorld(t testing.TB) *world {
	t.Helper()
	root := t.TempDir()
	w := &world{t: t, stateDir: filepath.Join(root, "state"), config: filepath.Join(root, "config.yaml"), dir: filepath.Join(root, "work")}
	if err := os.WriteFile(w.config, []byte(toyConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(w.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return w
}

type result struct {
	code           int
	stdout, stderr string
}

// command returns the cookbook command line (the test binary acting as cookbook).
func (w *world) command(args ...string) *exec.Cmd {
	full := append([]string{"--config", w.config, "--state-dir", w.stateDir}, args...)
	cmd := exec.Command(os.Args[0], full...)
	cmd.Env = append(append(os.Environ(), "COOKBOOK_TEST_CHILD=1"), w.env...)
	// A test binary killed before its cleanup takes its cookbook children with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

func (w *world) run(args ...string) result {
	w.t.Helper()
	cmd := w.command(args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		w.t.Fatal(err)
	}
	// A format verb without its value, or a value without its verb, is a bug
	// whatever the command (fmt prints "%!s(MISSING)", "%!(EXTRA ...)").
	for _, o := range []string{out.String(), errb.String()} {
		if i := strings.Index(o, "%!"); i >= 0 {
			w.t.Errorf("cookbook %s printed a formatting error: %q", strings.Join(args, " "), o[max(0, i-80):min(len(o), i+80)])
		}
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

func (w *world) toy(extra ...string) []string {
	return append([]string{"toy", "--cluster-name", "lab1", "--dir", w.dir}, extra...)
}

// runs returns the recorded runs.
func (w *world) runs() []*state.Run {
	w.t.Helper()
	runs, errs := (&state.Store{Dir: w.stateDir}).List()
	if len(errs) > 0 {
		w.t.Fatalf("unreadable run files: %v", errs)
	}
	return runs
}

func (w *world) markers() []string {
	m, _ := filepath.Glob(filepath.Join(w.dir, "marker-*"))
	for i := range m {
		m[i] = filepath.Base(m[i])
	}
	return m
}

func wantCode(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
}

// wantSkippedCounted checks a dry run's summary: its writes-skipped is the number of
// "DRY-RUN: would" lines it printed, so no skipped write is logged but not counted, or
// counted but not logged.
func wantSkippedCounted(t *testing.T, what string, r result) {
	t.Helper()
	m := regexp.MustCompile(`writes-skipped=(\d+)`).FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("%s: no dry-run summary with writes-skipped:\n%s", what, r.stderr)
	}
	lines := strings.Count(r.stderr, "DRY-RUN: would ")
	if m[1] != strconv.Itoa(lines) || lines == 0 {
		t.Errorf("%s: %d \"DRY-RUN: would\" line(s), summary says writes-skipped=%s:\n%s", what, lines, m[1], r.stderr)
	}
}

func TestListShowsCookbooks(t *testing.T) {
	w := newWorld(t)
	r := w.run("list")
	wantCode(t, r, 0)
	if !strings.Contains(r.stdout, "toy") || !strings.Contains(r.stdout, "a test cookbook that creates marker files") {
		t.Errorf("list output:\n%s", r.stdout)
	}
	r = w.run("toy", "--help")
	wantCode(t, r, 0)
	for _, want := range []string{"--cluster-name", "--items", "(default: 4)", "--new"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("toy --help lacks %q:\n%s", want, r.stdout)
		}
	}
	r = w.run("--generate-bash-completion")
	if !strings.Contains(r.stdout, "toy") || !strings.Contains(r.stdout, "resume") {
		t.Errorf("completion output:\n%s", r.stdout)
	}
}

func TestSuccess(t *testing.T) {
	w := newWorld(t)
	wantCode(t, w.run(w.toy()...), 0)
	if got := w.markers(); len(got) != 4 {
		t.Errorf("markers = %v, want 4", got)
	}
	runs := w.runs()
	if len(runs) != 1 || runs[0].Status != state.Done {
		t.Fatalf("runs = %+v", runs)
	}
	run := runs[0]
	res, _ := os.ReadFile(filepath.Join(w.dir, "result"))
	if string(res) != "token-of-"+run.ID {
		t.Errorf("result = %q", res)
	}
	if len(run.Steps) != 6 || run.Steps[1].Name != "item-1/mark" || run.Steps[1].Description != "create marker item-1" {
		t.Errorf("steps = %+v", run.Steps)
	}
	info, err := os.Stat((&state.Store{Dir: w.stateDir}).Path(run.ID))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("state file mode = %v, %v", info.Mode(), err)
	}
	log, _ := os.ReadFile((&state.Store{Dir: w.stateDir}).LogPath(run.ID))
	if !strings.Contains(string(log), "create marker item-2") || !strings.Contains(string(log), "step=item-2/mark progress=2/4") {
		t.Errorf("run log lacks step lines:\n%s", log)
	}
	r := w.run("runs")
	wantCode(t, r, 0)
	if !strings.Contains(r.stdout, run.ID) || !strings.Contains(r.stdout, "done") || !strings.Contains(r.stdout, "--dir=") {
		t.Errorf("runs output:\n%s", r.stdout)
	}
	r = w.run("runs", "show", run.ID)
	wantCode(t, r, 0)
	if !strings.Contains(r.stdout, "item-3/mark") || !strings.Contains(r.stdout, "[item-3]") {
		t.Errorf("runs show output:\n%s", r.stdout)
	}
}

func TestFailureThenResume(t *testing.T) {
	w := newWorld(t)
	breakFile := filepath.Join(w.dir, "break-item-3")
	os.WriteFile(breakFile, nil, 0o600)
	r := w.run(w.toy()...)
	wantCode(t, r, 1)
	run := w.runs()[0]
	if run.Status != state.Failed || run.Step("item-3/mark").Status != state.Failed || !strings.Contains(run.Error, "break-item-3 exists") {
		t.Fatalf("run after failure: %+v", run)
	}
	if !strings.Contains(r.stderr, "cookbook resume "+run.ID) || !strings.Contains(r.stderr, "at step item-3/mark") {
		t.Errorf("failure message does not say where and how to resume:\n%s", r.stderr)
	}
	// A new run of the same cookbook on the cluster is refused while this one is unfinished.
	r = w.run(w.toy()...)
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "cookbook resume "+run.ID) {
		t.Errorf("refusal does not name the resume command:\n%s", r.stderr)
	}
	os.Remove(breakFile)
	r = w.run("resume", run.ID)
	wantCode(t, r, 0)
	run = w.runs()[0]
	if run.Status != state.Done || len(w.runs()) != 1 {
		t.Fatalf("after resume: %+v", run)
	}
	if run.Step("item-1/mark").Attempts != 1 || run.Step("item-3/mark").Attempts != 2 {
		t.Errorf("done steps must not run again: item-1 attempts %d, item-3 attempts %d", run.Step("item-1/mark").Attempts, run.Step("item-3/mark").Attempts)
	}
	wantCode(t, w.run("resume", run.ID), 2) // nothing to resume
}

func TestNewStartsAnotherRun(t *testing.T) {
	w := newWorld(t)
	os.WriteFile(filepath.Join(w.dir, "break-finish"), nil, 0o600)
	wantCode(t, w.run(w.toy()...), 1)
	wantCode(t, w.run(w.toy("--new")...), 1)
	if n := len(w.runs()); n != 2 {
		t.Errorf("runs = %d, want 2", n)
	}
}

func TestAbandonRunsUndo(t *testing.T) {
	w := newWorld(t)
	os.WriteFile(filepath.Join(w.dir, "break-item-3"), nil, 0o600)
	wantCode(t, w.run(w.toy()...), 1)
	if got := w.markers(); len(got) != 2 {
		t.Fatalf("markers before abandon = %v", got)
	}
	id := w.runs()[0].ID
	wantCode(t, w.run("abandon", id), 0)
	if got := w.markers(); len(got) != 0 {
		t.Errorf("markers after abandon = %v, want none (undone)", got)
	}
	run := w.runs()[0]
	if run.Status != state.Abandoned || !run.Step("item-1/mark").Undone {
		t.Errorf("run after abandon: %+v", run)
	}
	// No longer unfinished: a new run starts without --new.
	os.Remove(filepath.Join(w.dir, "break-item-3"))
	wantCode(t, w.run(w.toy()...), 0)
}

func TestDryRunChangesNothing(t *testing.T) {
	w := newWorld(t)
	r := w.run(append([]string{"--dry-run"}, w.toy()...)...)
	wantCode(t, r, 0)
	if got := w.markers(); len(got) != 0 {
		t.Errorf("dry-run created %v", got)
	}
	if _, err := os.Stat(filepath.Join(w.dir, "result")); err == nil {
		t.Error("dry-run wrote the result")
	}
	if !strings.Contains(r.stderr, "DRY-RUN: would create marker item-4") {
		t.Errorf("dry-run output does not say what it would do:\n%s", r.stderr)
	}
	wantSkippedCounted(t, "dry-run", r)
	if _, err := os.Stat(w.stateDir); err == nil {
		t.Error("dry-run created the state dir")
	}
}

func TestBadInput(t *testing.T) {
	w := newWorld(t)
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte(strings.Replace(toyConfig, "{prefix: lab1-worker}", "{prefx: lab1-worker}", 1)), 0o600)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown cluster", []string{"toy", "--cluster-name", "nope", "--dir", w.dir}, `cluster "nope" is not in`},
		{"bad cluster name", []string{"toy", "--cluster-name", "a;b", "--dir", w.dir}, `--cluster-name: "a;b" is not a valid name`},
		{"bad number", []string{"toy", "--cluster-name", "lab1", "--dir", w.dir, "--items", "0"}, "--items: 0 is not a positive number"},
		{"not a number", []string{"toy", "--cluster-name", "lab1", "--dir", w.dir, "--items", "three"}, `--items: "three" is not a whole number`},
		{"unknown flag", []string{"toy", "--cluster-name", "lab1", "--dir", w.dir, "--itmes", "3"}, "unknown flag --itmes (see `cookbook toy --help`)"},
		{"unknown cookbook", []string{"add-k8s-nod"}, `"add-k8s-nod" is not a cookbook or command`},
		{"bad config", []string{"--config", bad, "toy", "--cluster-name", "lab1", "--dir", w.dir}, `roles.worker.prefx: unknown key (did you mean "prefix"?)`},
		{"missing config", []string{"--config", "/nonexistent.yaml", "toy", "--cluster-name", "lab1", "--dir", w.dir}, "/nonexistent.yaml"},
		{"confirmation without terminal", []string{"toy", "--cluster-name", "lab1", "--dir", w.dir, "--confirm"}, "pass --yes to confirm"},
		{"unknown run", []string{"resume", "20260101-000000-abcdef"}, "no such run"},
		{"missing flags", []string{"toy"}, "missing --cluster-name, --dir (see `cookbook toy --help`)"},
		{"bad duration", []string{"toy", "--cluster-name", "lab1", "--dir", w.dir, "--step-time", "5"}, `--step-time: "5" is not a duration (expected one such as 90s, 10m or 1h30m)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := w.run(tt.args...)
			wantCode(t, r, 2)
			if !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr %q does not contain %q", r.stderr, tt.want)
			}
			if lines := strings.Split(strings.TrimSpace(r.stderr), "\n"); len(lines) != 1 {
				t.Errorf("want a one-line error, got %d lines:\n%s", len(lines), r.stderr)
			}
			if len(w.markers()) != 0 || len(w.runs()) != 0 {
				t.Error("bad input changed something")
			}
		})
	}
	wantCode(t, w.run(w.toy("--confirm", "--yes")...), 0)
}

// TestPlanClashRefused: a plan whose batch group has one step name twice (a step set
// composed twice) is refused with exit 2 and a one-line error naming the step, before the
// run is saved: no run file, no run log, nothing done, and the same command without the
// clash then runs (no unfinished run blocks it). The dry-run refuses it the same way.
func TestPlanClashRefused(t *testing.T) {
	w := newWorld(t)
	const want = `cookbook: error: plan: step name "batch-1/mark" is used twice (the cookbook's plan cannot run; nothing was recorded)`
	for _, dry := range []bool{false, true} {
		args := w.toy("--clash", "--items", "2")
		if dry {
			args = append([]string{"--dry-run"}, args...)
		}
		r := w.run(args...)
		wantCode(t, r, 2)
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		if got := lines[len(lines)-1]; got != want {
			t.Errorf("dry-run %v: last stderr line\n%s\nwant\n%s", dry, got, want)
		}
		if len(lines) != 1 && !dry {
			t.Errorf("want a one-line error, got %d lines:\n%s", len(lines), r.stderr)
		}
		if strings.Contains(r.stderr, "resume") {
			t.Errorf("a refused plan suggests a resume:\n%s", r.stderr)
		}
		files, _ := os.ReadDir(filepath.Join(w.stateDir, "runs"))
		if len(files) != 0 || len(w.markers()) != 0 {
			t.Errorf("dry-run %v: the refused plan left %d run file(s) and markers %v", dry, len(files), w.markers())
		}
	}
	wantCode(t, w.run(w.toy()...), 0)
}

func TestCorruptStateFile(t *testing.T) {
	w := newWorld(t)
	os.WriteFile(filepath.Join(w.dir, "break-finish"), nil, 0o600)
	wantCode(t, w.run(w.toy()...), 1)
	id := w.runs()[0].ID
	path := (&state.Store{Dir: w.stateDir}).Path(id)
	data, _ := os.ReadFile(path)
	for name, content := range map[string][]byte{
		"truncated":      data[:len(data)/2],
		"future version": bytes.Replace(data, []byte(`"schema": 1`), []byte(`"schema": 99`), 1),
	} {
		t.Run(name, func(t *testing.T) {
			os.WriteFile(path, content, 0o600)
			r := w.run("resume", id)
			wantCode(t, r, 2)
			if !strings.Contains(r.stderr, path) {
				t.Errorf("error does not name the file: %s", r.stderr)
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, content) {
				t.Error("the corrupt file was overwritten")
			}
			wantCode(t, w.run("runs", "show", id), 2)
		})
	}
}

// waitFor polls the state dir until cond holds for the only run (the test's child
// process is the one writing it).
func (w *world) waitFor(cond func(*state.Run) bool) *state.Run {
	w.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		runs, _ := (&state.Store{Dir: w.stateDir}).List()
		if len(runs) > 0 && cond(runs[0]) {
			return runs[0]
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.t.Fatal("timed out waiting for the run state")
	return nil
}

func TestLockAcrossProcessesAndSignal(t *testing.T) {
	w := newWorld(t)
	hold := filepath.Join(w.dir, "hold")
	os.WriteFile(hold, nil, 0o600)
	a := w.command(w.toy()...)
	var aErr bytes.Buffer
	a.Stderr = &aErr
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	defer a.Process.Kill()
	run := w.waitFor(func(r *state.Run) bool {
		return r.Step("item-1/mark") != nil && r.Step("item-1/mark").Status == state.Running
	})

	r := w.run(w.toy("--new")...)
	wantCode(t, r, 3)
	for _, want := range []string{"cluster lab1 is locked", run.ID, fmt.Sprintf("pid %d", a.Process.Pid)} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("lock message %q lacks %q", r.stderr, want)
		}
	}
	// Without --new the same: a live run is not an unfinished one to resume (exit 2),
	// the lock names it (exit 3).
	r = w.run(w.toy()...)
	wantCode(t, r, 3)
	if !strings.Contains(r.stderr, "cluster lab1 is locked") || !strings.Contains(r.stderr, run.ID) || strings.Contains(r.stderr, "cookbook resume") {
		t.Errorf("a new run beside a live one of the same cookbook is not refused by the lock:\n%s", r.stderr)
	}
	if r := w.run("runs"); !strings.Contains(r.stdout, "running") {
		t.Errorf("runs does not show the live run as running:\n%s", r.stdout)
	}

	// SIGTERM: the step is cancelled, the run saved as interrupted, exit 130.
	a.Process.Signal(syscall.SIGTERM)
	err := a.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
		t.Fatalf("interrupted run exited with %v, want 130; stderr:\n%s", err, aErr.String())
	}
	run = w.runs()[0]
	if run.Status != state.Interrupted || run.Step("item-1/mark").Status != state.Interrupted {
		t.Fatalf("run after SIGTERM: status %s, step %+v", run.Status, run.Step("item-1/mark"))
	}
	// SIGHUP (the operator's ssh session dropped): the same, and the resume finishes it.
	a = w.command("resume", run.ID)
	aErr.Reset()
	a.Stderr = &aErr
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	defer a.Process.Kill()
	w.waitFor(func(r *state.Run) bool {
		return r.Status == state.Running && r.Step("item-1/mark").Status == state.Running
	})
	a.Process.Signal(syscall.SIGHUP)
	err = a.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
		t.Fatalf("hung-up run exited with %v, want 130; stderr:\n%s", err, aErr.String())
	}
	if run = w.runs()[0]; run.Status != state.Interrupted {
		t.Fatalf("run after SIGHUP: status %s", run.Status)
	}
	os.Remove(hold)
	wantCode(t, w.run("resume", run.ID), 0)
	if len(w.markers()) != 4 {
		t.Errorf("markers after resume: %v", w.markers())
	}
}

// TestKillNineAndResume kills the cookbook process at random moments (between and
// inside steps) and resumes until done: the end state is that of an uninterrupted run.
func TestKillNineAndResume(t *testing.T) {
	seed := time.Now().UnixNano()
	if s := os.Getenv("COOKBOOK_TEST_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	t.Logf("seed %d (set COOKBOOK_TEST_SEED to replay)", seed)
	rng := rand.New(rand.NewSource(seed))
	for i := 0; i < 8; i++ {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			w := newWorld(t)
			args := w.toy("--items", "5", "--step-time", "40ms")
			kills := 0
			var id string
			for attempt := 0; attempt < 20; attempt++ {
				var cmd *exec.Cmd
				if id == "" {
					cmd = w.command(args...)
				} else {
					cmd = w.command("resume", id)
				}
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				done := make(chan error, 1)
				go func() { done <- cmd.Wait() }()
				var err error
				if kills < 3 {
					select {
					case err = <-done:
					case <-time.After(time.Duration(rng.Intn(300)) * time.Millisecond):
						cmd.Process.Signal(syscall.SIGKILL)
						err = <-done
						kills++
					}
				} else {
					err = <-done
				}
				runs := w.runs() // fails the test if any run file is unreadable
				if len(runs) > 1 {
					t.Fatalf("%d runs recorded, want 1", len(runs))
				}
				if len(runs) == 1 {
					id = runs[0].ID
				}
				if err == nil {
					break
				}
			}
			runs := w.runs()
			if len(runs) != 1 || runs[0].Status != state.Done {
				t.Fatalf("final runs: %+v", runs)
			}
			if got := w.markers(); len(got) != 5 {
				t.Errorf("markers = %v", got)
			}
			res, _ := os.ReadFile(filepath.Join(w.dir, "result"))
			if string(res) != "token-of-"+id {
				t.Errorf("result = %q, want the token recorded by the first process", res)
			}
			data, _ := json.Marshal(runs[0])
			t.Logf("%d kills; run: %.200s", kills, data)
		})
	}
	_ = context.Background
}
