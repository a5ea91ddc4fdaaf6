package lab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
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
	// Log receives kwokctl's output; nil discards it (its last lines are in errors).
	Log io.Writer
	// AuditReads records read requests (get, list, watch) in the audit log too, for a
	// benchmark that counts a client's requests (Requests); by default only writes.
	AuditReads bool
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
	watchdog *watchdog
	stopOnce sync.Once
	stopErr  error

	mu      sync.Mutex
	reboots map[string]context.CancelFunc
	bg      sync.WaitGroup
	bgCtx   context.Context
	bgStop  context.CancelFunc
	// watchOnce starts watchNodeDeletions.
	watchOnce sync.Once
}

// auditPolicy records the metadata of every write request, once it completed.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted", "Panic"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
`

// auditReadsPolicy is auditPolicy with the read requests too.
const auditReadsPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted", "Panic"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection", "get", "list", "watch"]
- level: None
`

// StartControlPlane starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
// the kwok controller with kwokctl's binary runtime from the lab binaries (nothing is
// downloaded), and returns once the API server answers, the default service account exists
// and kwok runs nodes. A watchdog process tears everything down if the calling process dies
// without calling Stop (a killed test binary leaves nothing behind). What a previous,
// killed, owner of the same Dir left running is killed first.
func StartControlPlane(ctx context.Context, opts Options) (cp *ControlPlane, err error) {
	bin := opts.BinDir
	if bin == "" {
		var ok bool
		if bin, ok = BinDir(); !ok {
			return nil, fmt.Errorf("start control plane: lab binaries missing in %s: run `make lab-bins`", bin)
		}
	}
	cp = &ControlPlane{BinDir: bin, Dir: opts.Dir, Name: opts.Name, reboots: map[string]context.CancelFunc{}}
	if cp.Name == "" {
		cp.Name = "lab"
	}
	if cp.Dir == "" {
		sweepTemp(ctx)
		d, err := os.MkdirTemp("", tempPrefix)
		if err != nil {
			return nil, fmt.Errorf("start control plane: %w", err)
		}
		cp.Dir, cp.ownDir = d, true
	} else if cp.Dir, err = filepath.Abs(cp.Dir); err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	cp.workDir = filepath.Join(cp.Dir, "kwok")
	cp.Kubeconfig = filepath.Join(cp.Dir, "kubeconfig")
	cp.bgCtx, cp.bgStop = context.WithCancel(context.Background())
	if err := cp.own(ctx); err != nil {
		cp.bgStop()
		if cp.ownDir {
			os.RemoveAll(cp.Dir)
		}
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	// From here on, the directory is ours and Stop cleans up (cp itself is nil in an
	// error return).
	started := cp
	defer func() {
		if err != nil {
			started.Stop()
		}
	}()
	removeDir := ""
	if cp.ownDir {
		removeDir = cp.Dir
	}
	if cp.watchdog, err = startWatchdog(cp.workDir, removeDir); err != nil {
		return nil, err
	}
	// A cluster of the same name left in the work dir is removed first.
	if err := cp.kwokctl(ctx, opts.Log, "delete", "cluster"); err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	policy := filepath.Join(cp.Dir, "audit-policy.yaml")
	pol := auditPolicy
	if opts.AuditReads {
		pol = auditReadsPolicy
	}
	if err := os.WriteFile(policy, []byte(pol), 0o600); err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	// kwokctl picks free ports as it goes: two clusters created at the same moment (test
	// packages run in parallel) could pick the same one. Creations are serialised.
	unlock, err := lockFile(ctx, filepath.Join(filepath.Dir(bin), "create.lock"))
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
		// kwokctl 0.8 files the extra args of a component under the position of its
		// first --extra-args among all of them: each component's first one must come
		// in the order of first appearance (kube-controller-manager, kube-scheduler,
		// kwok-controller), the others after them.
		//
		// The node lifecycle controller notices a Ready node (and lifts its not-ready
		// taint) within a second rather than five.
		"--extra-args", "kube-controller-manager=node-monitor-period=1s",
		// One controller manager and one scheduler, nothing supervising them: with leader
		// election, an API server too busy to renew their lease within 10 s (a 200-worker
		// roll on 2 shared cores) makes them exit for good, and with them the disruption
		// controller, so every drain then waits on budgets nobody updates.
		"--extra-args", "kube-scheduler=leader-elect=false",
		// kwok manages only the Nodes carrying its annotation, so that a node whose
		// annotation is removed can be made NotReady (a simulated reboot).
		"--extra-args", "kwok-controller=manage-all-nodes=false",
		"--extra-args", "kube-controller-manager=leader-elect=false",
		"--extra-args", "kwok-controller=manage-nodes-with-annotation-selector="+KwokAnnotation+"=fake",
		// As kubeadm runs it: the token cleaner deletes expired bootstrap tokens (and
		// the garbage collector then what they own, such as kubeadm-certs).
		"--extra-args", "kube-controller-manager=controllers=*,bootstrapsigner,tokencleaner",
		"--quiet-pull",
		"--wait", "2m",
	)
	unlock()
	if err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	cp.RESTConfig = cfg
	if cp.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	// Ready means: the API answers and the default service account can be used.
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := cp.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		return nil, fmt.Errorf("start control plane: waiting for the default service account: %w", err)
	}
	// Ready also means kwok runs the nodes: a probe node must turn Ready.
	probe := "lab-probe-" + strconv.Itoa(os.Getpid())
	if err := cp.AddNode(ctx, NodeSpec{Name: probe}); err != nil {
		return nil, fmt.Errorf("start control plane: kwok does not manage nodes: %w", err)
	}
	if err := cp.RemoveNode(ctx, probe); err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	return cp, nil
}

// own makes the control plane's directory ours: what a dead owner left running there is
// killed, and this process is recorded as the owner. A directory a live process owns is
// an error.
func (cp *ControlPlane) own(ctx context.Context) error {
	if err := os.MkdirAll(cp.workDir, 0o700); err != nil {
		return err
	}
	if err := cleanLeftovers(ctx, cp.Dir, cp.workDir); err != nil {
		return err
	}
	return writeOwner(cp.Dir)
}

// lockFile takes an exclusive flock on path, waiting as long as ctx allows, and returns
// its release.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
	}
}

// command returns a command that is killed when this process dies.
func command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

func (cp *ControlPlane) kwokctl(ctx context.Context, log io.Writer, args ...string) error {
	cmd := command(ctx, filepath.Join(cp.BinDir, "kwokctl"), append([]string{"--name", cp.Name}, args...)...)
	cmd.Env = append(os.Environ(), "KWOK_WORKDIR="+cp.workDir, "KWOK_KUBECTL_BINARY="+filepath.Join(cp.BinDir, "kubectl"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if log != nil {
		w := io.MultiWriter(&out, log)
		cmd.Stdout, cmd.Stderr = w, w
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kwokctl %s: %w: %s", strings.Join(args[:2], " "), err, lastLines(out.String(), 15))
	}
	return nil
}

// Stop deletes the cluster: every process is stopped (kwokctl stops them, what is left is
// killed) and, when the control plane made its own directory, the files are removed.
func (cp *ControlPlane) Stop() error {
	cp.stopOnce.Do(func() {
		cp.bgStop()
		cp.bg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		pids := pidFiles(cp.workDir)
		err := cp.kwokctl(ctx, nil, "delete", "cluster")
		err = errors.Join(err, reap(ctx, cp.workDir, pids))
		if cp.watchdog != nil {
			err = errors.Join(err, cp.watchdog.fire(ctx))
		}
		if cp.ownDir {
			err = errors.Join(err, os.RemoveAll(cp.Dir))
		} else {
			err = errors.Join(err, os.Remove(filepath.Join(cp.Dir, ownerFile)))
		}
		if err != nil {
			err = fmt.Errorf("stop control plane: %w", err)
		}
		cp.stopErr = err
	})
	return cp.stopErr
}

// AuditEvent is a write request recorded by the API server's audit log.
type AuditEvent struct {
	Verb       string
	RequestURI string
	UserAgent  string
	User       string // the authenticated user name
	// Resource, Subresource, Namespace and Name identify the object written.
	Resource, Subresource, Namespace, Name string
	Code                                   int // the HTTP status of the response
	Time                                   time.Time
}

// AuditLog is the path of the API server's audit log.
func (cp *ControlPlane) AuditLog() string {
	return filepath.Join(cp.workDir, "clusters", cp.Name, "logs", "audit.log")
}

// openAuditLogs returns the audit log with the files the API server rotated it into
// before it (at 100 MB each: audit-TIMESTAMP.log, oldest first), read as one.
func (cp *ControlPlane) openAuditLogs() (io.Reader, func(), error) {
	rotated, err := filepath.Glob(filepath.Join(filepath.Dir(cp.AuditLog()), "audit-*.log"))
	if err != nil {
		return nil, nil, err
	}
	sort.Strings(rotated) // the names' timestamps sort in time order
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	var readers []io.Reader
	for _, name := range append(rotated, cp.AuditLog()) {
		f, err := os.Open(name)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		files = append(files, f)
		readers = append(readers, f)
	}
	return io.MultiReader(readers...), closeAll, nil
}

// WriteRequests returns the write requests (verbs create, update, patch, delete and
// deletecollection) the API server completed at or after since whose user agent contains
// userAgent ("" for all), in the order they completed, from the audit log. Server-side
// dry-runs (dryRun=All in the request URI) are not write requests: the API server
// validated them and changed nothing.
func (cp *ControlPlane) WriteRequests(ctx context.Context, since time.Time, userAgent string) ([]AuditEvent, error) {
	f, closeAll, err := cp.openAuditLogs()
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	defer closeAll()
	evs, err := writeRequests(ctx, f, since, userAgent)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	return evs, nil
}

// Requests returns every request (reads only if the control plane was started with
// AuditReads) the API server completed at or after since whose user agent contains
// userAgent, from the audit log; server-side dry-runs included.
func (cp *ControlPlane) Requests(ctx context.Context, since time.Time, userAgent string) ([]AuditEvent, error) {
	f, closeAll, err := cp.openAuditLogs()
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	defer closeAll()
	evs, err := auditEvents(ctx, f, since, userAgent, func(string, string) bool { return true })
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	return evs, nil
}

// writeRequests reads an audit log (one JSON event a line) and returns the completed write
// requests at or after since whose user agent contains userAgent, server-side dry-runs
// left out.
func writeRequests(ctx context.Context, r io.Reader, since time.Time, userAgent string) ([]AuditEvent, error) {
	return auditEvents(ctx, r, since, userAgent, func(verb, uri string) bool {
		switch verb {
		case "create", "update", "patch", "delete", "deletecollection":
			return !serverDryRun(uri)
		}
		return false
	})
}

// auditEvents reads an audit log and returns the completed requests at or after since
// whose user agent contains userAgent and that keep says to keep.
func auditEvents(ctx context.Context, r io.Reader, since time.Time, userAgent string, keep func(verb, uri string) bool) ([]AuditEvent, error) {
	var out []AuditEvent
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for n := 0; sc.Scan(); n++ {
		if n%1000 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var ev struct {
			Stage     string `json:"stage"`
			Verb      string `json:"verb"`
			URI       string `json:"requestURI"`
			UserAgent string `json:"userAgent"`
			User      struct {
				Username string `json:"username"`
			} `json:"user"`
			ObjectRef struct {
				Resource    string `json:"resource"`
				Subresource string `json:"subresource"`
				Namespace   string `json:"namespace"`
				Name        string `json:"name"`
			} `json:"objectRef"`
			StageTimestamp time.Time `json:"stageTimestamp"`
			ResponseStatus struct {
				Code int `json:"code"`
			} `json:"responseStatus"`
		}
		// A line cut short (the API server is writing it) is skipped.
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil || ev.Stage != "ResponseComplete" {
			continue
		}
		if !keep(ev.Verb, ev.URI) || ev.StageTimestamp.Before(since) || !strings.Contains(ev.UserAgent, userAgent) {
			continue
		}
		out = append(out, AuditEvent{
			Verb: ev.Verb, RequestURI: ev.URI, UserAgent: ev.UserAgent, User: ev.User.Username,
			Resource: ev.ObjectRef.Resource, Subresource: ev.ObjectRef.Subresource,
			Namespace: ev.ObjectRef.Namespace, Name: ev.ObjectRef.Name,
			Code: ev.ResponseStatus.Code, Time: ev.StageTimestamp,
		})
	}
	return out, sc.Err()
}

// Kubectl runs the lab's kubectl against the control plane and returns its combined output.
func (cp *ControlPlane) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := command(ctx, filepath.Join(cp.BinDir, "kubectl"), append([]string{"--kubeconfig", cp.Kubeconfig}, args...)...)
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

// serverDryRun reports whether a request URI asks for a server-side dry-run
// (?dryRun=All), which changes nothing.
func serverDryRun(requestURI string) bool {
	u, err := url.ParseRequestURI(requestURI)
	return err == nil && slices.Contains(u.Query()["dryRun"], "All")
}
