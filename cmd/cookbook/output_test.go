package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"example.com/cookbook/cookbooks/state"
)

// TestLogFormats: --log-format json gives one JSON object a line on stderr (for a log
// system), logfmt key=value lines, and an unknown format is bad input.
func TestLogFormats(t *testing.T) {
	w := newWorld(t)
	r := w.run(append([]string{"--log-format", "json"}, w.toy()...)...)
	wantCode(t, r, 0)
	var msgs []string
	for _, line := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
		var rec struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
			Step  string `json:"step"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not a JSON line: %q (%v)", line, err)
		}
		if rec.Level == "" || rec.Msg == "" {
			t.Errorf("JSON line without level or msg: %q", line)
		}
		msgs = append(msgs, rec.Msg)
	}
	if !strings.Contains(strings.Join(msgs, "\n"), "create marker item-4") {
		t.Errorf("JSON log lacks the step lines: %v", msgs)
	}

	r = w.run(append([]string{"--log-format", "logfmt"}, w.toy("--new")...)...)
	wantCode(t, r, 0)
	if !strings.Contains(r.stderr, `level=info msg="create marker item-4" step=item-4/mark progress=4/4`) {
		t.Errorf("logfmt log:\n%s", r.stderr)
	}

	r = w.run(append([]string{"--log-format", "yaml"}, w.toy("--new")...)...)
	wantCode(t, r, 2)
	if strings.TrimSpace(r.stderr) != `cookbook: error: --log-format: "yaml" is not a log format (expected text, logfmt or json)` {
		t.Errorf("bad --log-format:\n%s", r.stderr)
	}
}

// TestJSONOutputs decodes every --output json shape of the toy cookbook: a dry-run's plan,
// `runs`, `runs show`, and the plans of a rehearsed resume and abandon.
func TestJSONOutputs(t *testing.T) {
	w := newWorld(t)
	r := w.run(append([]string{"--dry-run", "--output", "json"}, w.toy()...)...)
	wantCode(t, r, 0)
	var plan planJSON
	if err := json.Unmarshal([]byte(r.stdout), &plan); err != nil {
		t.Fatalf("dry-run plan is not JSON: %v\n%s", err, r.stdout)
	}
	var names []string
	for _, s := range plan.Steps {
		names = append(names, s.Name+"="+strings.Join(s.Writes, ";"))
	}
	want := "record-token=,item-1/mark=create marker item-1,item-2/mark=create marker item-2,item-3/mark=create marker item-3,item-4/mark=create marker item-4,finish=write result"
	if plan.Schema != "cookbook.plan/v1" || plan.Cookbook != "toy" || plan.Cluster != "lab1" || plan.Args["items"] != "" || plan.WritesSkipped != 5 || strings.Join(names, ",") != want {
		t.Errorf("plan: %+v\nsteps: %s\nwant:  %s", plan, strings.Join(names, ","), want)
	}
	if plan.Steps[1].Description != "create marker item-1" || plan.Steps[1].Status != "done" {
		t.Errorf("step: %+v", plan.Steps[1])
	}

	os.WriteFile(filepath.Join(w.dir, "break-item-3"), nil, 0o600)
	wantCode(t, w.run(w.toy("--items", "3")...), 1)
	id := w.runs()[0].ID
	var runs struct {
		Schema string `json:"schema"`
		Runs   []struct {
			ID     string            `json:"id"`
			Status string            `json:"status"`
			State  string            `json:"state"`
			At     string            `json:"at"`
			Args   map[string]string `json:"args"`
			Steps  []state.Step      `json:"steps"`
		} `json:"runs"`
	}
	r = w.run("runs", "--output", "json")
	wantCode(t, r, 0)
	if err := json.Unmarshal([]byte(r.stdout), &runs); err != nil || runs.Schema != "cookbook.runs/v1" || len(runs.Runs) != 1 {
		t.Fatalf("runs --output json: %v\n%s", err, r.stdout)
	}
	if got := runs.Runs[0]; got.ID != id || got.Status != "failed" || got.State != "failed" || got.At != "item-3/mark" || got.Args["items"] != "3" || len(got.Steps) != 5 {
		t.Errorf("runs: %+v", got)
	}
	var one struct {
		Schema string `json:"schema"`
		Run    struct {
			ID    string       `json:"id"`
			Error string       `json:"error"`
			Log   string       `json:"log"`
			Steps []state.Step `json:"steps"`
		} `json:"run"`
	}
	r = w.run("runs", "show", "-o", "json", id)
	wantCode(t, r, 0)
	if err := json.Unmarshal([]byte(r.stdout), &one); err != nil || one.Schema != "cookbook.run/v1" || one.Run.ID != id || !strings.Contains(one.Run.Error, "break-item-3") || !strings.HasSuffix(one.Run.Log, id+".log") {
		t.Fatalf("runs show --output json: %v\n%s", err, r.stdout)
	}
	if s := one.Run.Steps[3]; s.Name != "item-3/mark" || s.Status != state.Failed {
		t.Errorf("runs show step 4: %+v", s)
	}

	os.Remove(filepath.Join(w.dir, "break-item-3"))
	r = w.run("--dry-run", "-o", "json", "resume", id)
	wantCode(t, r, 0)
	plan = planJSON{}
	if err := json.Unmarshal([]byte(r.stdout), &plan); err != nil {
		t.Fatalf("resume plan: %v\n%s", err, r.stdout)
	}
	if plan.Run != id || plan.WritesSkipped != 2 || !plan.Steps[1].Recorded || plan.Steps[3].Recorded || strings.Join(plan.Steps[3].Writes, ";") != "create marker item-3" {
		t.Errorf("resume plan: %+v", plan)
	}
	r = w.run("--dry-run", "-o", "json", "abandon", id)
	wantCode(t, r, 0)
	plan = planJSON{}
	if err := json.Unmarshal([]byte(r.stdout), &plan); err != nil {
		t.Fatalf("abandon plan: %v\n%s", err, r.stdout)
	}
	names = nil
	for _, s := range plan.Steps {
		names = append(names, s.Name+"="+strings.Join(s.Writes, ";"))
	}
	if !plan.Abandon || strings.Join(names, ",") != "item-3/mark=,item-2/mark=remove marker item-2,item-1/mark=remove marker item-1" {
		t.Errorf("abandon plan: %+v\n%s", plan, strings.Join(names, ","))
	}

	r = w.run("runs", "--output", "yaml")
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, `--output: "yaml" is not an output format (expected text or json)`) {
		t.Errorf("bad --output: %s", r.stderr)
	}
}

// TestRunsShowFollow: `runs show ID --follow`, from another shell, prints the run's log as
// it is written and ends when the run ends, with the final step table, exit 0; the
// follow of a failed run exits 1 saying how it ended.
func TestRunsShowFollow(t *testing.T) {
	w := newWorld(t)
	hold := filepath.Join(w.dir, "hold")
	os.WriteFile(hold, nil, 0o600)
	a := w.command(w.toy()...)
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { a.Process.Kill(); a.Wait() }()
	run := w.waitFor(func(r *state.Run) bool { s := r.Step("item-1/mark"); return s != nil && s.Status == state.Running })

	f := w.command("runs", "show", "--follow", run.ID)
	var out syncBuffer
	f.Stdout = &out
	if err := f.Start(); err != nil {
		t.Fatal(err)
	}
	defer f.Process.Kill()
	done := make(chan error, 1)
	go func() { done <- f.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), "create marker item-1") {
		if time.Now().After(deadline) {
			t.Fatalf("the follower does not show the running step's log:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("the follower ended while the run is running: %v\n%s", err, out.String())
	case <-time.After(300 * time.Millisecond):
	}
	os.Remove(hold)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("follower: %v\n%s", err, out.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the follower did not end with the run:\n%s", out.String())
	}
	got := out.String()
	for _, want := range []string{"create marker item-4", "finished", "--- run " + run.ID + ": done ---", "write the result"} {
		if !strings.Contains(got, want) {
			t.Errorf("follow output lacks %q:\n%s", want, got)
		}
	}

	// The follower exits with the run's outcome: 1 for a run that failed.
	os.WriteFile(filepath.Join(w.dir, "break-item-1"), nil, 0o600)
	wantCode(t, w.run(w.toy("--new")...), 1)
	failed := w.runs()[0]
	r := w.run("runs", "show", "--follow", failed.ID)
	wantCode(t, r, 1)
	if !strings.Contains(r.stdout, "--- run "+failed.ID+": failed ---") || !strings.Contains(r.stderr, "run "+failed.ID+" ended failed: ") || !strings.Contains(r.stderr, "break-item-1 exists") {
		t.Errorf("follow of a failed run:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}
}

// TestColoursOnATerminal: on a terminal the log levels are coloured; piped, they are
// not (TestRollRebootAllWorkers checks a piped log).
func TestColoursOnATerminal(t *testing.T) {
	w := newWorld(t)
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal here (%v)", err)
	}
	defer master.Close()
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tty, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	var out syncBuffer
	go io.Copy(&out, master)
	cmd := w.command(w.toy()...)
	// termenv takes a set CI variable to mean "no terminal": unset it, as on an operator host.
	cmd.Env = append(cmd.Env, "TERM=xterm-256color", "NO_COLOR=", "CLICOLOR_FORCE=", "CI=")
	cmd.Stderr = tty
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "finished") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "\x1b[") {
		t.Errorf("no colour on a terminal:\n%q", out.String())
	}
}

// TestAuditStartEndAndTaskID: every recorded run sends a START and an END line with
// PASS/FAIL and its exit code to the audit sinks, each with the --task-id; a resume keeps
// the task the run was started for.
func TestAuditStartEndAndTaskID(t *testing.T) {
	w := newWorld(t)
	auditFile := filepath.Join(w.dir, "..", "audit.log")
	cfg := strings.Replace(toyConfig, "clusters:", "audit: {file: "+auditFile+"}\nclusters:", 1)
	if err := os.WriteFile(w.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(w.dir, "break-item-2"), nil, 0o600)
	wantCode(t, w.run(append([]string{"--task-id", "T123456"}, w.toy("--items", "2")...)...), 1)
	id := w.runs()[0].ID
	os.Remove(filepath.Join(w.dir, "break-item-2"))
	wantCode(t, w.run("resume", id), 0)
	data, _ := os.ReadFile(auditFile)
	log := string(data)
	for _, want := range []string{
		"START - cookbook toy --cluster-name=lab1 --dir=" + w.dir + " --items=2 (run " + id + ") (T123456)",
		"END (FAIL) - cookbook toy --cluster-name=lab1 --dir=" + w.dir + " --items=2 (run " + id + ", exit_code=1) (T123456)",
		"START - resume of cookbook toy",
		"END (PASS) - resume of cookbook toy --cluster-name=lab1 --dir=" + w.dir + " --items=2 (run " + id + ", exit_code=0) (T123456)",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("audit log lacks %q:\n%s", want, log)
		}
	}
	r := w.run(append([]string{"--task-id", "T1; rm -rf /"}, w.toy("--new")...)...)
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, `--task-id: "T1; rm -rf /" is not a task id`) {
		t.Errorf("bad task id: %s", r.stderr)
	}
}
