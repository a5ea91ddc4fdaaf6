// Command cookbook-lab runs the project's lab: a real Kubernetes control plane with
// simulated kubelets, a simulated OpenStack cloud whose servers are VMs answering SSH,
// shaped as the toolsbeta cluster, so that every cookbook can run end to end on one
// machine.
//
//	cookbook-lab up [--workers N] [--dir DIR] [--detach]
//	cookbook-lab status [--dir DIR]
//	cookbook-lab down [--dir DIR]
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/charmbracelet/log"
	"github.com/urfave/cli/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/k8sops"
	"example.com/cookbook/lab"
	"example.com/cookbook/lab/cloud"
	"example.com/cookbook/lab/stack"
	"example.com/cookbook/lab/vm"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "cookbook-lab: error: %v\n", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "cookbook-lab",
		Usage: "run the lab: a toolsbeta cluster on this machine (Kubernetes control plane, simulated OpenStack, VMs over SSH)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "dir", Value: ".lab", Usage: "where the lab keeps its files"},
		},
		Commands: []*cli.Command{
			{Name: "up", Usage: "start the lab (in the foreground; Ctrl-C stops it) and print the export line for cookbook", Action: up, Flags: []cli.Flag{
				&cli.IntFlag{Name: "workers", Value: 4, Usage: "number of workers"},
				&cli.IntFlag{Name: "nfs-workers", Value: 2, Usage: "number of NFS workers"},
				&cli.IntFlag{Name: "controls", Value: 3, Usage: "number of control nodes"},
				&cli.IntFlag{Name: "external-etcd", Usage: "run an external etcd of this many VMs (<prefix>-etcd-N, named in the configuration's etcd.external) instead of kubeadm's stacked etcd on the control nodes (default: stacked)"},
				&cli.Float64Flag{Name: "reboot-seconds", Value: 2, Usage: "how long a VM stays down when it reboots (a real one: 20 to 60)"},
				&cli.IntFlag{Name: "ssh-port", Usage: "port of the VMs' SSH servers (default: a free one)"},
				&cli.IntFlag{Name: "metrics-port", Usage: "port of the VMs' node exporters, GET http://VM-ADDRESS:PORT/metrics (default: a free one)"},
				&cli.StringFlag{Name: "cloud-addr", Value: "127.0.0.1:0", Usage: "address of the OpenStack API"},
				&cli.BoolFlag{Name: "detach", Usage: "run in the background; stop it with cookbook-lab down"},
				&cli.BoolFlag{Name: "no-sample-workload", Usage: "do not apply the sample workload"},
				&cli.IntFlag{Name: "pods", Usage: "also run a workload of about this many pods: Deployments of 100 pods, each with a PDB of maxUnavailable 5, five per namespace workload-000, workload-001, ... (up waits until they run)"},
				&cli.StringFlag{Name: "kubernetes-version", Usage: "the cluster's Kubernetes version vX.Y.Z (kubelets, packages, kubeadm-config, static pods; default: the lab's)"},
				dirFlag(),
			}},
			{Name: "down", Usage: "stop a detached lab", Action: down, Flags: []cli.Flag{dirFlag()}},
			{Name: "status", Usage: "show servers, nodes, pods per node and the last commands the VMs ran", Action: status, Flags: []cli.Flag{dirFlag()}},
		},
	}
}

// state is what a running lab writes to DIR/lab.json.
type state struct {
	PID        int    `json:"pid"`
	CloudURL   string `json:"cloudURL"`
	Kubeconfig string `json:"kubeconfig"`
	Env        string `json:"env"`
}

// dirFlag lets --dir follow the command too (cookbook-lab down --dir DIR), as the lab's
// own messages print it.
func dirFlag() cli.Flag {
	return &cli.StringFlag{Name: "dir", Usage: "where the lab keeps its files", DefaultText: ".lab, or the --dir given before the command"}
}

// dirOf returns the lab directory: --dir after the command, else before it, else .lab.
func dirOf(c *cli.Context) (string, error) {
	for _, ctx := range c.Lineage() {
		if d := ctx.String("dir"); d != "" {
			return filepath.Abs(d)
		}
	}
	return filepath.Abs(".lab")
}

func ensureBins() error {
	if _, ok := lab.BinDir(); ok {
		return nil
	}
	script := filepath.Join("lab", "bins", "build.sh")
	if _, err := os.Stat(script); err != nil {
		dir, _ := lab.BinDir()
		return fmt.Errorf("lab binaries missing in %s: run `make lab-bins` in the cookbook source tree", dir)
	}
	fmt.Fprintln(os.Stderr, "cookbook-lab: building the lab binaries first (make lab-bins; ~15 minutes cold)")
	cmd := exec.Command("bash", script)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

func up(c *cli.Context) error {
	dir, err := dirOf(c)
	if err != nil {
		return err
	}
	if n := c.Int("external-etcd"); n < 0 {
		return fmt.Errorf("--external-etcd: %d is negative (expected a number of etcd VMs, or 0 for kubeadm's stacked etcd)", n)
	}
	if err := ensureBins(); err != nil {
		return err
	}
	if old, err := readState(dir); err == nil && alive(old.PID) {
		return fmt.Errorf("a lab is already running from %s (pid %d): cookbook-lab down --dir %s", dir, old.PID, dir)
	}
	if c.Bool("detach") {
		return detach(c, dir)
	}
	logger := log.NewWithOptions(os.Stderr, log.Options{ReportTimestamp: true, TimeFormat: time.TimeOnly, Prefix: "lab"})
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	fmt.Fprintf(os.Stderr, "cookbook-lab: starting afresh in %s (a lab does not keep its servers and nodes across down/up)\n", dir)
	start := time.Now()
	s, err := stack.Up(ctx, stack.Options{
		Dir: dir, Workers: orNone(c.Int("workers")), NFSWorkers: orNone(c.Int("nfs-workers")), Controls: orNone(c.Int("controls")),
		ExternalEtcd:   c.Int("external-etcd"),
		RebootDownTime: time.Duration(c.Float64("reboot-seconds") * float64(time.Second)),
		SSHPort:        c.Int("ssh-port"), MetricsPort: c.Int("metrics-port"), CloudAddr: c.String("cloud-addr"), SampleWorkload: !c.Bool("no-sample-workload"), KubernetesVersion: c.String("kubernetes-version"), Log: slog.New(logger),
		Workload: workloadOf(c.Int("pods")),
	})
	if err != nil {
		return err
	}
	defer s.Down()
	st := state{PID: os.Getpid(), CloudURL: s.Cloud.URL, Kubeconfig: s.CP.Kubeconfig, Env: s.Env()}
	data, _ := json.MarshalIndent(st, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "lab.json"), data, 0o600); err != nil {
		return err
	}
	defer os.Remove(filepath.Join(dir, "lab.json"))
	fmt.Printf("lab up in %s: cluster %s, OpenStack API %s, kubectl at %s/kubectl\n", time.Since(start).Round(time.Second), s.Cluster, s.Cloud.AuthURL(), s.CP.BinDir)
	fmt.Printf("each VM serves its node exporter at http://VM-ADDRESS:%d/metrics\n", s.Fleet.MetricsPort)
	fmt.Println(s.Env())
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "cookbook-lab: stopping")
	return nil
}

// workloadOf is the --pods workload: Deployments of 100 pods (fewer for a small one),
// each with a PDB of maxUnavailable 5, five Deployments per namespace.
func workloadOf(pods int) lab.Workload {
	if pods <= 0 {
		return lab.Workload{}
	}
	replicas := min(pods, 100)
	return lab.Workload{Namespace: "workload", Deployments: (pods + replicas - 1) / replicas, Replicas: int32(replicas), MaxUnavailable: 5, PerNamespace: 5}
}

func orNone(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// detach starts `up` again in a session of its own and returns once the lab is up.
func detach(c *cli.Context, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	logPath := filepath.Join(dir, "lab.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	var args []string
	for _, a := range os.Args[1:] {
		if a != "--detach" && a != "-detach" {
			args = append(args, a)
		}
	}
	_ = os.Remove(filepath.Join(dir, "lab.json"))
	cmd := exec.Command(os.Args[0], args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for {
		if st, err := readState(dir); err == nil && st.PID == cmd.Process.Pid {
			fmt.Printf("lab running in the background (pid %d, log %s); stop it with: cookbook-lab down --dir %s\n", st.PID, logPath, dir)
			fmt.Println(st.Env)
			return nil
		}
		select {
		case err := <-exited:
			out, _ := os.ReadFile(logPath)
			return fmt.Errorf("the lab did not start (%v):\n%s", err, out)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func readState(dir string) (state, error) {
	var st state
	data, err := os.ReadFile(filepath.Join(dir, "lab.json"))
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(data, &st)
}

func alive(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) == nil
}

func down(c *cli.Context) error {
	dir, err := dirOf(c)
	if err != nil {
		return err
	}
	st, err := readState(dir)
	if err != nil || !alive(st.PID) {
		fmt.Printf("no lab running from %s\n", dir)
		return nil
	}
	if err := syscall.Kill(st.PID, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop lab pid %d: %w", st.PID, err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for alive(st.PID) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the lab (pid %d) did not stop within 2 minutes", st.PID)
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Printf("lab stopped (pid %d)\n", st.PID)
	return nil
}

func status(c *cli.Context) error {
	dir, err := dirOf(c)
	if err != nil {
		return err
	}
	st, err := readState(dir)
	if err != nil || !alive(st.PID) {
		return fmt.Errorf("no lab running from %s: cookbook-lab up --dir %s", dir, dir)
	}
	ctx := c.Context
	fmt.Printf("lab pid %d, OpenStack API %s\n%s\n\n", st.PID, st.CloudURL, st.Env)
	client, err := k8sops.NewClient(st.Kubeconfig, "")
	if err != nil {
		return err
	}
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	pods, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var servers []cloud.ServerSummary
	if err := getJSON(st.CloudURL+"/_lab/servers", &servers); err != nil {
		return fmt.Errorf("servers: %w", err)
	}
	printNodes(os.Stdout, nodes.Items, pods.Items, servers)
	resp, err := http.Get(st.CloudURL + "/_lab/commands")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var hist []vm.Record
	body, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(body, &hist); err != nil {
		return fmt.Errorf("commands: %w", err)
	}
	fmt.Println("\nlast commands run on the VMs:")
	if len(hist) > 15 {
		hist = hist[len(hist)-15:]
	}
	for _, r := range hist {
		fmt.Printf("  %s  %-40s exit %-3d %s\n", r.Time.Format(time.TimeOnly), r.VM, r.ExitCode, strings.Join(r.Argv, " "))
	}
	return nil
}

func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// printNodes prints one line per node (its server's image, Ready, cordoned, boot id,
// running pods), then the servers that have no node (booting, or left behind).
func printNodes(out io.Writer, nodes []corev1.Node, pods []corev1.Pod, servers []cloud.ServerSummary) {
	perNode := map[string]int{}
	for _, p := range pods {
		if p.Status.Phase == corev1.PodRunning {
			perNode[p.Spec.NodeName]++
		}
	}
	image := map[string]string{}
	for _, s := range servers {
		image[s.Name] = s.Image
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tIMAGE\tSTATUS\tSCHEDULING\tBOOT ID\tRUNNING PODS")
	hasNode := map[string]bool{}
	for _, n := range nodes {
		hasNode[n.Name] = true
		ready, sched := "NotReady", "schedulable"
		if k8sops.IsReady(&n) {
			ready = "Ready"
		}
		if n.Spec.Unschedulable {
			sched = "cordoned"
		}
		im := image[n.Name]
		if im == "" {
			im = "(no server)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%.8s\t%d\n", n.Name, im, ready, sched, n.Status.NodeInfo.BootID, perNode[n.Name])
	}
	for _, s := range servers {
		if !hasNode[s.Name] {
			fmt.Fprintf(w, "%s\t%s\t(no node; server %s)\t-\t-\t-\n", s.Name, s.Image, s.Status)
		}
	}
	w.Flush()
}
