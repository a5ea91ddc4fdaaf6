package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The control plane's processes are started by kwokctl, each in a session (and so a process
// group) of its own, with its pid in <work dir>/clusters/<name>/pids/<component>.pid. The
// lab reaps them by those files: the whole group is killed, and only when the process is
// still the one kwokctl started (its command line names the work dir), so a recycled pid is
// never hit.

// ownerFile, in a control plane's directory, records the process that owns it.
const ownerFile = "owner"

// pidFiles returns the pids recorded by kwokctl for every cluster under workDir.
func pidFiles(workDir string) []int {
	files, _ := filepath.Glob(filepath.Join(workDir, "clusters", "*", "pids", "*.pid"))
	var pids []int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ours reports whether pid is alive and runs with workDir on its command line.
func ours(pid int, workDir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), workDir)
}

// reap kills the process groups of pids that are still ours and waits until they are gone.
func reap(ctx context.Context, workDir string, pids []int) error {
	var live []int
	for _, pid := range pids {
		if ours(pid, workDir) {
			// kwokctl made each process a session leader: its pid is its group's id.
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = syscall.Kill(pid, syscall.SIGKILL)
			live = append(live, pid)
		}
	}
	for _, pid := range live {
		for ours(pid, workDir) {
			if err := sleep(ctx, 20*time.Millisecond); err != nil {
				return fmt.Errorf("reap pid %d: %w", pid, err)
			}
		}
	}
	return nil
}

// procStart returns the start time of pid in clock ticks since boot (field 22 of
// /proc/<pid>/stat), which tells a live process from a later one with the same pid.
func procStart(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return f[19], nil
}

// writeOwner records this process as the owner of dir.
func writeOwner(dir string) error {
	start, err := procStart(os.Getpid())
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, ownerFile), fmt.Appendf(nil, "%d %s\n", os.Getpid(), start), 0o600)
}

// ownerAlive reports whether the process recorded as dir's owner still runs, and its pid.
// A dir without an owner file has no owner.
func ownerAlive(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		return 0, false
	}
	start, err := procStart(pid)
	return pid, err == nil && start == f[1]
}

// cleanLeftovers kills what a dead owner of dir left running under workDir (a test binary
// killed while its watchdog was killed too). It fails if a live process owns dir.
func cleanLeftovers(ctx context.Context, dir, workDir string) error {
	if pid, alive := ownerAlive(dir); alive && pid != os.Getpid() {
		return fmt.Errorf("%s is in use by process %d", dir, pid)
	}
	return reap(ctx, workDir, pidFiles(workDir))
}

// tempPrefix names the control planes' own temp dirs.
const tempPrefix = "cookbook-lab-"

// sweepTemp removes the temp dirs of control planes whose owner died without cleaning up,
// after killing what they left running. Errors are ignored: the sweep is a courtesy.
func sweepTemp(ctx context.Context) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*"))
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, ownerFile)); err != nil {
			continue // being created, or not ours
		}
		if _, alive := ownerAlive(d); alive {
			continue
		}
		if reap(ctx, filepath.Join(d, "kwok"), pidFiles(filepath.Join(d, "kwok"))) == nil {
			_ = os.RemoveAll(d)
		}
	}
}

// watchdogScript waits until its stdin is closed, which happens when the lab process exits
// in any way (even SIGKILL) or calls Stop, then kills the process groups recorded under the
// work dir ($1) and, if $2 is not empty, removes that directory.
const watchdogScript = `read -r _ || true
killed=
for f in "$1"/clusters/*/pids/*.pid; do
  [ -f "$f" ] || continue
  p=$(cat "$f")
  if tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$1"; then
    kill -9 "-$p" 2>/dev/null; kill -9 "$p" 2>/dev/null
    killed="$killed $p"
  fi
done
for i in 1 2 3 4 5 6 7 8 9 10; do
  left=
  for p in $killed; do [ -s "/proc/$p/cmdline" ] && left=1; done
  [ -z "$left" ] && break
  sleep 0.5
done
[ -n "$2" ] && rm -rf -- "$2"
exit 0`

// watchdog is a process, in a session of its own, that reaps the control plane when the
// process that started it goes away without calling Stop.
type watchdog struct {
	cmd  *exec.Cmd
	pipe *os.File // write end of the watchdog's stdin; closing it fires the watchdog
}

func startWatchdog(workDir, removeDir string) (*watchdog, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start lab watchdog: %w", err)
	}
	defer r.Close()
	cmd := exec.Command("sh", "-c", watchdogScript, "lab-watchdog", workDir, removeDir)
	cmd.Stdin = r
	// Its own session: a Ctrl-C or a kill of the test's process group does not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return nil, fmt.Errorf("start lab watchdog: %w", err)
	}
	return &watchdog{cmd: cmd, pipe: w}, nil
}

// fire makes the watchdog reap now and waits (bounded by ctx) until it is done.
func (wd *watchdog) fire(ctx context.Context) error {
	wd.pipe.Close()
	done := make(chan error, 1)
	go func() { done <- wd.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("lab watchdog: %w", err)
		}
		return nil
	case <-ctx.Done():
		_ = wd.cmd.Process.Kill()
		<-done
		return errors.Join(errors.New("lab watchdog did not finish"), ctx.Err())
	}
}
