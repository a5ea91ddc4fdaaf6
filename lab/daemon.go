package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// daemon is a Debian daemon the lab runs for the tests (Alertmanager, Prometheus): its own
// process group in a temp dir of its own, ready once GET /-/ready answers 200.
type daemon struct {
	// URL is its base URL, http://127.0.0.1:PORT.
	URL string
	// Dir holds its configuration and storage; removed by Stop.
	Dir string

	name     string
	cmd      *exec.Cmd
	out      *bytes.Buffer
	done     chan struct{}
	stopOnce sync.Once
	stopErr  error
}

// startDaemon starts bin with args (listening at addr, working in dir), records its pid in
// dir for sweepDirs and waits until it is ready. On an error the process is gone.
func startDaemon(ctx context.Context, name, bin, dir, addr string, args ...string) (*daemon, error) {
	d := &daemon{URL: "http://" + addr, Dir: dir, name: name, out: &bytes.Buffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(bin, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	// A group of its own (killed whole by Stop), and killed by the kernel should the
	// process that started it die first.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	if err := os.WriteFile(filepath.Join(dir, amPidFile), []byte(strconv.Itoa(d.cmd.Process.Pid)), 0o600); err != nil {
		d.kill()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	if err := d.waitReady(ctx); err != nil {
		d.kill()
		return nil, fmt.Errorf("start %s: %w (output: %s)", name, err, lastLines(d.output(), 5))
	}
	return d, nil
}

func (d *daemon) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		select {
		case <-d.done:
			return errors.New(d.name + " exited")
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, d.URL+"/-/ready", nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return fmt.Errorf("not ready at %s: %w", d.URL, err)
		}
	}
}

// output is what the daemon printed so far (only safe once it exited).
func (d *daemon) output() string {
	select {
	case <-d.done:
		return d.out.String()
	default:
		return ""
	}
}

// kill kills the daemon's process group and waits until it is gone.
func (d *daemon) kill() {
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
	_ = d.cmd.Process.Kill()
	<-d.done
}

// Pid is the daemon's process id.
func (d *daemon) Pid() int { return d.cmd.Process.Pid }

// Stop kills the daemon, waits until it is gone and removes its dir.
func (d *daemon) Stop() error {
	d.stopOnce.Do(func() {
		d.kill()
		d.stopErr = os.RemoveAll(d.Dir)
	})
	return d.stopErr
}
