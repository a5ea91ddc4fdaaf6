package lab

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The lab's Alertmanager is Debian's real prometheus-alertmanager, started on a free
// loopback port with a configuration that routes every alert nowhere, clustering off,
// and its storage in a temp dir of its own. It dies with the process that started it
// (the kernel's parent-death signal); a dir a killed owner left behind is swept by the
// next start.

// amPrefix names the Alertmanagers' temp dirs.
const amPrefix = "cookbook-lab-am-"

// amPidFile, in an Alertmanager's dir, records its pid.
const amPidFile = "pid"

const amConfig = `route:
  receiver: blackhole
receivers:
  - name: blackhole
`

// AlertmanagerBinary returns the path of prometheus-alertmanager (Debian's name) or
// alertmanager, and whether it was found.
func AlertmanagerBinary() (string, bool) {
	for _, name := range []string{"prometheus-alertmanager", "alertmanager"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, true
		}
	}
	if _, err := os.Stat("/usr/bin/prometheus-alertmanager"); err == nil {
		return "/usr/bin/prometheus-alertmanager", true
	}
	return "prometheus-alertmanager", false
}

// Alertmanager is a running Alertmanager.
type Alertmanager struct{ *daemon }

// StartAlertmanager starts an Alertmanager on a free loopback port and returns once it is
// ready. Stop kills it and removes its dir.
func StartAlertmanager(ctx context.Context) (*Alertmanager, error) {
	bin, ok := AlertmanagerBinary()
	if !ok {
		return nil, fmt.Errorf("start alertmanager: %s not found (apt-get install prometheus-alertmanager)", bin)
	}
	sweepDirs(amPrefix)
	var lastErr error
	// A port picked free may be taken before the Alertmanager binds it: a second try.
	for try := 0; try < 3; try++ {
		am, err := startAlertmanager(ctx, bin)
		if err == nil {
			return am, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func startAlertmanager(ctx context.Context, bin string) (am *Alertmanager, err error) {
	dir, err := os.MkdirTemp("", amPrefix)
	if err != nil {
		return nil, fmt.Errorf("start alertmanager: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	if err := writeOwner(dir); err != nil {
		return nil, fmt.Errorf("start alertmanager: %w", err)
	}
	cfg := filepath.Join(dir, "alertmanager.yml")
	if err := os.WriteFile(cfg, []byte(amConfig), 0o600); err != nil {
		return nil, fmt.Errorf("start alertmanager: %w", err)
	}
	port, err := freeLoopbackPort()
	if err != nil {
		return nil, fmt.Errorf("start alertmanager: %w", err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	d, err := startDaemon(ctx, "alertmanager", bin, dir, addr,
		"--config.file="+cfg,
		"--storage.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--cluster.listen-address=", // no gossip port
		"--log.level=warn",
	)
	if err != nil {
		return nil, err
	}
	return &Alertmanager{d}, nil
}

func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Amtool runs the amtool of the same package against this Alertmanager and returns its
// standard output.
func (am *Alertmanager) Amtool(ctx context.Context, args ...string) (string, error) {
	bin, err := exec.LookPath("amtool")
	if err != nil {
		return "", fmt.Errorf("amtool: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--alertmanager.url=" + am.URL}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("amtool %s: %w: %s", strings.Join(args, " "), err, lastLines(stderr.String(), 5))
	}
	return stdout.String(), nil
}

// sweepDirs kills what a dead owner left running from a dir named prefix* (its pid in
// amPidFile) and removes the dir.
func sweepDirs(prefix string) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*"))
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, ownerFile)); err != nil {
			continue // being created, or not ours
		}
		if _, alive := ownerAlive(d); alive {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(d, amPidFile)); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				if reap(context.Background(), d, []int{pid}) != nil {
					continue
				}
			}
		}
		_ = os.RemoveAll(d)
	}
}

// NeedAlertmanager starts an Alertmanager for the test, stopped when it ends. Without the
// binary the test is skipped with a message, or fails under CI=true.
func NeedAlertmanager(t testing.TB) *Alertmanager {
	t.Helper()
	if bin, ok := AlertmanagerBinary(); !ok {
		msg := fmt.Sprintf("%s not found: apt-get install prometheus-alertmanager to run this test against a real Alertmanager", bin)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	am, err := StartAlertmanager(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := am.Stop(); err != nil {
			t.Errorf("stop alertmanager: %v", err)
		}
	})
	return am
}
