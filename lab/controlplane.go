package lab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Options configure a control plane.
type Options struct {
	// Dir holds the control plane's files; a new temp dir (removed by Stop) if empty.
	Dir string
	// Name is the cluster's name for kwokctl; "lab" if empty.
	Name string
	// BinDir holds the binaries; BinDir() if empty.
	BinDir string
	// Log receives kwokctl's output; nil discards it.
	Log *os.File
}

// ControlPlane is a running lab control plane.
type ControlPlane struct {
	// Kubeconfig is the path of an admin kubeconfig.
	Kubeconfig string
	// RESTConfig and Client talk to the kube-apiserver as admin.
	RESTConfig *rest.Config
	Client     kubernetes.Interface
	// BinDir holds kubectl and the other lab binaries.
	BinDir string
	// Dir holds the control plane's files.
	Dir string
	// Name is the kwokctl cluster name.
	Name string

	ownDir   bool
	workDir  string
	watchdog *exec.Cmd
	stopOnce sync.Once
	stopErr  error

	mu      sync.Mutex
	reboots map[string]context.CancelFunc
	bg      sync.WaitGroup
	bgCtx   context.Context
	bgStop  context.CancelFunc
}

const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
`

// StartControlPlane starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
// the kwok controller with kwokctl's binary runtime, and returns once the API server
// answers. A watchdog process tears everything down if the calling process dies without
// calling Stop (a killed test binary leaves nothing behind).
func StartControlPlane(ctx context.Context, opts Options) (*ControlPlane, error) {
	bin := opts.BinDir
	if bin == "" {
		var ok bool
		if bin, ok = BinDir(); !ok {
			return nil, fmt.Errorf("lab binaries missing in %s: run `make lab-bins`", bin)
		}
	}
	cp := &ControlPlane{BinDir: bin, Dir: opts.Dir, Name: opts.Name, reboots: map[string]context.CancelFunc{}}
	if cp.Name == "" {
		cp.Name = "lab"
	}
	if cp.Dir == "" {
		d, err := os.MkdirTemp("", "cookbook-lab-")
		if err != nil {
			return nil, fmt.Errorf("start control plane: %w", err)
		}
		cp.Dir, cp.ownDir = d, true
	}
	cp.workDir = filepath.Join(cp.Dir, "kwok")
	cp.Kubeconfig = filepath.Join(cp.Dir, "kubeconfig")
	cp.bgCtx, cp.bgStop = context.WithCancel(context.Background())
	if err := os.MkdirAll(cp.workDir, 0o700); err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	policy := filepath.Join(cp.Dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	// A cluster of the same name left by a killed process is removed first.
	_ = cp.kwokctl(ctx, opts.Log, "delete", "cluster")
	if err := cp.startWatchdog(); err != nil {
		return nil, err
	}
	// kwokctl picks free ports as it goes: two clusters created at the same moment (test
	// packages run in parallel) could pick the same one. Creations are serialised.
	unlock, err := lockFile(filepath.Join(filepath.Dir(bin), "create.lock"))
	if err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	err = cp.kwokctl(ctx, opts.Log, "create", "cluster", "--runtime", "binary",
		"--kube-apiserver-binary", filepath.Join(bin, "kube-apiserver"),
		"--kube-controller-manager-binary", filepath.Join(bin, "kube-controller-manager"),
		"--kube-scheduler-binary", filepath.Join(bin, "kube-scheduler"),
		"--kwok-controller-binary", filepath.Join(bin, "kwok"),
		"--etcd-binary", filepath.Join(bin, "etcd"),
		"--kube-audit-policy", policy,
		"--kubeconfig", cp.Kubeconfig,
		"--disable-qps-limits",
		// kwok manages only the Nodes carrying its annotation, so that a node whose
		// annotation is removed can be made NotReady (a simulated reboot).
		"--extra-args", "kwok-controller=manage-all-nodes=false",
		"--extra-args", "kwok-controller=manage-nodes-with-annotation-selector="+KwokAnnotation+"=fake",
		"--quiet-pull",
		"--wait", "2m",
	)
	unlock()
	if err != nil {
		cp.Stop()
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		cp.Stop()
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	cp.RESTConfig = cfg
	if cp.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		cp.Stop()
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	// Ready means: the API answers and the default service account can be used.
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := cp.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		cp.Stop()
		return nil, fmt.Errorf("start control plane: waiting for the default service account: %w", err)
	}
	// Ready also means kwok runs the nodes: a probe node must turn Ready.
	probe := "lab-probe-" + strconv.Itoa(os.Getpid())
	if err := cp.AddNode(ctx, NodeSpec{Name: probe}); err != nil {
		cp.Stop()
		return nil, fmt.Errorf("start control plane: kwok does not manage nodes: %w", err)
	}
	if err := cp.RemoveNode(ctx, probe); err != nil {
		cp.Stop()
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	return cp, nil
}

// lockFile takes an exclusive flock on path and returns its release.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

func (cp *ControlPlane) kwokctl(ctx context.Context, log *os.File, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(cp.BinDir, "kwokctl"), append([]string{"--name", cp.Name}, args...)...)
	cmd.Env = append(os.Environ(), "KWOK_WORKDIR="+cp.workDir, "KWOK_KUBECTL_BINARY="+filepath.Join(cp.BinDir, "kubectl"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if log != nil {
		cmd.Stdout, cmd.Stderr = log, log
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kwokctl %s: %w: %s", strings.Join(args[:2], " "), err, lastLines(out.String(), 15))
	}
	return nil
}

// startWatchdog starts a process, in a session of its own, that deletes the cluster and
// its files when this process dies.
func (cp *ControlPlane) startWatchdog() error {
	// The work dir is passed in the environment, not as an argument: pkill -f matches
	// command lines, and the watchdog must not kill itself before it removes the files.
	script := `while kill -0 "$1" 2>/dev/null; do sleep 1; done
"$2" --name "$3" delete cluster >/dev/null 2>&1
pkill -9 -f -- "$KWOK_WORKDIR" >/dev/null 2>&1
[ "$4" = yes ] && rm -rf "$5"
exit 0`
	own := "no"
	if cp.ownDir {
		own = "yes"
	}
	cmd := exec.Command("sh", "-c", script, "lab-watchdog", strconv.Itoa(os.Getpid()), filepath.Join(cp.BinDir, "kwokctl"), cp.Name, own, cp.Dir)
	cmd.Env = append(os.Environ(), "KWOK_WORKDIR="+cp.workDir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start lab watchdog: %w", err)
	}
	cp.watchdog = cmd
	return nil
}

// Stop deletes the cluster: every process is stopped and, when the control plane made its
// own directory, the files are removed.
func (cp *ControlPlane) Stop() error {
	cp.stopOnce.Do(func() {
		cp.bgStop()
		cp.bg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err := cp.kwokctl(ctx, nil, "delete", "cluster")
		// Anything still running from the work dir is killed.
		_ = exec.Command("pkill", "-9", "-f", "--", cp.workDir).Run()
		if cp.watchdog != nil {
			_ = cp.watchdog.Process.Kill()
			_ = cp.watchdog.Wait()
		}
		if cp.ownDir {
			err = errors.Join(err, os.RemoveAll(cp.Dir))
		}
		cp.stopErr = err
	})
	return cp.stopErr
}

// AuditEvent is a write request recorded by the API server's audit log.
type AuditEvent struct {
	Verb       string    `json:"verb"`
	RequestURI string    `json:"requestURI"`
	UserAgent  string    `json:"userAgent"`
	Code       int       `json:"code"`
	Time       time.Time `json:"time"`
}

// WriteRequests returns the write requests (create, update, patch, delete) the API server
// completed since the given time whose user agent contains userAgent ("" for all).
func (cp *ControlPlane) WriteRequests(ctx context.Context, since time.Time, userAgent string) ([]AuditEvent, error) {
	path := filepath.Join(cp.workDir, "clusters", cp.Name, "logs", "audit.log")
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	defer f.Close()
	var out []AuditEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var ev struct {
			Stage          string    `json:"stage"`
			Verb           string    `json:"verb"`
			RequestURI     string    `json:"requestURI"`
			UserAgent      string    `json:"userAgent"`
			StageTimestamp time.Time `json:"stageTimestamp"`
			ResponseStatus struct {
				Code int `json:"code"`
			} `json:"responseStatus"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil || ev.Stage != "ResponseComplete" {
			continue
		}
		switch ev.Verb {
		case "create", "update", "patch", "delete", "deletecollection":
		default:
			continue
		}
		if ev.StageTimestamp.Before(since) || !strings.Contains(ev.UserAgent, userAgent) {
			continue
		}
		out = append(out, AuditEvent{Verb: ev.Verb, RequestURI: ev.RequestURI, UserAgent: ev.UserAgent, Code: ev.ResponseStatus.Code, Time: ev.StageTimestamp})
	}
	return out, sc.Err()
}

// Kubectl runs the lab's kubectl against the control plane and returns its combined output.
func (cp *ControlPlane) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(cp.BinDir, "kubectl"), append([]string{"--kubeconfig", cp.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, lastLines(string(out), 10))
	}
	return string(out), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
