package vm

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"
)

// bootFinished is the file cloud-init writes when it has finished.
const bootFinished = "/var/lib/cloud/instance/boot-finished"

// racingPrograms, and the fleet's Programs, are provisioning commands: they fail while
// cloud-init runs (it holds the dpkg lock and is still configuring the VM).
var racingPrograms = []string{"apt-get", "puppet", "run-puppet-agent"}

// exists answers test -e for the files the VMs know: cloud-init's boot-finished.
func (v *VM) exists(path string) bool {
	switch path {
	case bootFinished:
		return v.CloudInitDone()
	case "/", "/etc", "/var/lib/cloud/instance":
		return true
	}
	return false
}

// defaultPrograms succeed with no output: what provisioning and package steps run.
var defaultPrograms = []string{"apt-get", "mkdir", "true", "puppet", "run-puppet-agent", "modprobe", "sysctl", "swapoff", "install", "tee", "cloud-init"}

// exec runs one command line; drop means the session ends without an exit status.
// Exec runs a command line on the VM as an operator's shell there would (recorded in the
// fleet's history like a command over SSH): its stdout, stderr and exit code.
func (v *VM) Exec(line string) (string, string, int) {
	var out, errs strings.Builder
	code, _ := v.exec(line, &out, &errs)
	return out.String(), errs.String(), code
}

func (v *VM) exec(line string, stdout, stderr io.Writer) (code int, drop bool) {
	f := v.fleet
	argv, err := splitWords(line)
	if err != nil || len(argv) == 0 {
		fmt.Fprintf(stderr, "bash: syntax error: %v\n", err)
		f.record(v.Name, argv, 2)
		return 2, false
	}
	args := argv
	if args[0] == "sudo" {
		args = args[1:]
		for len(args) > 0 && strings.HasPrefix(args[0], "-") {
			if args[0] == "--" {
				args = args[1:]
				break
			}
			args = args[1:]
		}
	}
	// env(1) with variable assignments runs the rest, as hooks run remotely.
	if len(args) > 0 && args[0] == "env" {
		args = args[1:]
		for len(args) > 0 && strings.Contains(args[0], "=") && !strings.HasPrefix(args[0], "=") {
			args = args[1:]
		}
	}
	f.mu.Lock()
	before := f.before
	f.mu.Unlock()
	if before != nil && before(v.Name, args) {
		return 0, true
	}
	code, drop = v.run(args, stdout, stderr)
	f.record(v.Name, argv, code)
	return code, drop
}

func (v *VM) run(args []string, stdout, stderr io.Writer) (int, bool) {
	f := v.fleet
	if len(args) == 0 {
		return 0, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := strings.Join(args, " ")
	switch {
	case cmd == "hostname":
		fmt.Fprintln(stdout, v.Name)
	case cmd == "hostname -f":
		if f.Domain != "" {
			fmt.Fprintln(stdout, v.Name+"."+f.Domain)
		} else {
			fmt.Fprintln(stdout, v.Name)
		}
	case cmd == "cat /etc/os-release":
		fmt.Fprint(stdout, osRelease(v.Image))
	case cmd == "lsb_release -cs":
		fmt.Fprintln(stdout, debianRelease(v.Image).codename)
	case cmd == "cat /proc/sys/kernel/random/boot_id":
		fmt.Fprintln(stdout, v.BootID())
	case args[0] == "uptime":
		fmt.Fprintf(stdout, " %s up 3 min,  1 user,  load average: 0.08, 0.03, 0.01\n", time.Now().Format("15:04:05"))
	case cmd == "systemctl reboot" || cmd == "reboot" || strings.HasPrefix(cmd, "shutdown -r"):
		if f.HangReboot[v.Name] {
			<-v.downChan() // hangs until a hard reboot (or Delete, Close) stops the VM
			return 1, true
		}
		go func() {
			time.Sleep(50 * time.Millisecond)
			v.reboot(false)
		}()
		return 0, true
	case len(args) >= 2 && args[0] == "kubeadm" && args[1] == "token",
		len(args) >= 4 && args[0] == "kubeadm" && args[1] == "init" && args[2] == "phase" && args[3] == "upload-certs":
		return v.kubeadm(ctx, args[1:], stdout, stderr), false
	case len(args) >= 2 && args[0] == "kubeadm" && args[1] == "join":
		return v.join(ctx, args[2:], stdout, stderr), false
	case args[0] == "etcdctl":
		return v.etcdctl(args[1:], stdout, stderr), false
	case len(args) >= 2 && args[0] == "kubeadm" && args[1] == "reset":
		return v.reset(ctx, args[2:], stdout, stderr), false
	case args[0] == "blkid":
		return v.blkid(args[1:], stdout), false
	case strings.HasPrefix(args[0], "mkfs.") && len(args) >= 2:
		return v.mkfs(strings.TrimPrefix(args[0], "mkfs."), args[1:], stdout, stderr), false
	case cmd == "cat /etc/fstab":
		for _, l := range v.Fstab() {
			fmt.Fprintln(stdout, l)
		}
	case len(args) == 4 && args[0] == "sed" && args[1] == "-i" && strings.HasPrefix(args[2], "$a ") && args[3] == "/etc/fstab":
		v.mu.Lock()
		v.fstab = append(v.fstab, strings.TrimPrefix(args[2], "$a "))
		v.mu.Unlock()
	case args[0] == "mount":
		return v.mount(args[1:], stderr), false
	case args[0] == "findmnt" && len(args) == 3 && args[1] == "-n":
		dev, ok := v.Mounted(args[2])
		if !ok {
			return 1, false
		}
		fmt.Fprintf(stdout, "%s %s ext4 rw,relatime\n", args[2], dev)
	case len(args) >= 2 && args[0] == "kubeadm" && args[1] == "upgrade":
		return v.kubeadmUpgrade(ctx, args[2:], stdout, stderr), false
	case cmd == "kubeadm version -o short":
		if kv := v.installedVersion("kubeadm"); kv != nil {
			fmt.Fprintf(stdout, "v%s\n", kv)
		}
	case cmd == "systemctl restart kubelet":
		return v.restartKubelet(ctx, stderr), false
	case cmd == "systemctl daemon-reload":
	case args[0] == "apt-cache":
		return v.aptCache(args, stdout, stderr), false
	case args[0] == "apt-mark":
		return v.aptMark(args, stdout, stderr), false
	case args[0] == "dpkg-query":
		return v.dpkgQuery(args, stdout, stderr), false
	case args[0] == "dpkg":
		return v.dpkg(args, stdout, stderr), false
	case len(args) >= 2 && args[0] == "apt-get" && args[1] == "install" && v.CloudInitDone():
		return v.aptGetInstall(args, stdout, stderr), false
	case (args[0] == "test" || args[0] == "[") && len(args) >= 3 && (args[1] == "-e" || args[1] == "-f"):
		if !v.exists(args[2]) {
			return 1, false
		}
	case contains(racingPrograms, args[0]) || contains(f.Programs, args[0]):
		if !v.CloudInitDone() {
			if args[0] == "apt-get" {
				fmt.Fprintln(stderr, "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 713 (apt-get)\nN: Be aware that removing the lock file is not a solution and may break your system.\nE: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is another process using it?")
				return 100, false
			}
			fmt.Fprintf(stderr, "%s: cloud-init is still running (no /var/lib/cloud/instance/boot-finished): what it configures is not there yet\n", args[0])
			return 1, false
		}
		if args[0] == "apt-get" && len(args) > 1 {
			fmt.Fprintf(stdout, "Reading package lists... Done\n")
		}
	case contains(defaultPrograms, args[0]) || contains(f.Programs, args[0]):
		if args[0] == "apt-get" && len(args) > 1 {
			fmt.Fprintf(stdout, "Reading package lists... Done\n")
		}
	default:
		fmt.Fprintf(stderr, "bash: %s: command not found\n", args[0])
		return 127, false
	}
	return 0, false
}

// canAdmin reports whether the VM has the cluster's admin.conf (a control-plane host
// of a lab with a cluster), as kubeadm token needs; if not, it says so on stderr.
func (v *VM) canAdmin(stderr io.Writer) bool {
	v.mu.Lock()
	control := v.control
	v.mu.Unlock()
	if !control {
		fmt.Fprintln(stderr, "failed to load admin kubeconfig: open /etc/kubernetes/admin.conf: no such file or directory\nTo see the stack trace of this error execute with --v=5 or higher")
		return false
	}
	if v.fleet.Cluster == nil {
		fmt.Fprintln(stderr, "error: no control plane on this host")
		return false
	}
	return true
}

// certificateKeyLine is the line kubeadm init phase upload-certs prints the key on.
var certificateKeyLine = regexp.MustCompile(`(?m)^([0-9a-f]{64})$`)

// kubeadm runs the real kubeadm binary for the kubeadm commands that need no kubelet
// (token ..., init phase upload-certs) on a control VM: its output and exit code are
// kubeadm's. The certificate key upload-certs prints is remembered for tests
// (CertificateKey).
func (v *VM) kubeadm(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if !v.canAdmin(stderr) {
		return 1
	}
	var out bytes.Buffer
	code, err := v.fleet.Cluster.Kubeadm(ctx, v.Name, v.Address, args, io.MultiWriter(stdout, &out), stderr)
	if err != nil {
		fmt.Fprintf(stderr, "kubeadm: %v\n", err)
		return 1
	}
	if args[0] == "init" && code == 0 {
		if m := certificateKeyLine.FindAllStringSubmatch(out.String(), -1); m != nil {
			v.fleet.mu.Lock()
			v.fleet.etcd.certKey = m[len(m)-1][1]
			v.fleet.mu.Unlock()
		}
	}
	return code
}

// join parses kubeadm join's arguments and registers the node.
func (v *VM) join(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := v.fleet
	token, control, certKey := "", false, ""
	for i := 0; i < len(args); i++ {
		switch {
		case args[i] == "--certificate-key" && i+1 < len(args):
			certKey = args[i+1]
			i++
		case strings.HasPrefix(args[i], "--certificate-key="):
			certKey = strings.TrimPrefix(args[i], "--certificate-key=")
		case args[i] == "--token" && i+1 < len(args):
			token = args[i+1]
			i++
		case strings.HasPrefix(args[i], "--token="):
			token = strings.TrimPrefix(args[i], "--token=")
		case args[i] == "--control-plane":
			control = true
		}
	}
	if token == "" {
		fmt.Fprintln(stderr, "error execution phase preflight: --token is required")
		return 1
	}
	if f.Cluster == nil {
		fmt.Fprintln(stderr, "error execution phase preflight: cannot reach the API server")
		return 1
	}
	v.kubelet.Lock()
	defer v.kubelet.Unlock()
	v.mu.Lock()
	joined := v.joined
	v.mu.Unlock()
	if f.joinFails(v.Name) {
		fmt.Fprintln(stderr, "error execution phase preflight: [preflight] Some fatal errors occurred:\n\t[ERROR CRI]: container runtime is not running")
		return 1
	}
	if joined {
		fmt.Fprintln(stderr, "error execution phase preflight: [preflight] Some fatal errors occurred:\n\t[ERROR FileAvailable--etc-kubernetes-kubelet.conf]: /etc/kubernetes/kubelet.conf already exists")
		return 1
	}
	_, cluster, err := v.clusterVersion(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "error execution phase preflight: unable to fetch the kubeadm-config ConfigMap: %v\n", err)
		return 1
	}
	if skew := kubeletSkew(v.installedVersion("kubelet"), cluster); skew != "" {
		fmt.Fprintf(stderr, "error execution phase preflight: [preflight] Some fatal errors occurred:\n\t[ERROR KubeletVersion]: %s\n", skew)
		return 1
	}
	if control {
		if err := f.checkCertificateKey(ctx, certKey); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
	}
	if err := f.Cluster.Join(ctx, JoinRequest{Node: v.Name, Token: token, ControlPlane: control, Address: v.Address, BootID: v.BootID(), KubeletVersion: upstream(v.PackageVersion("kubelet"))}); err != nil {
		var ready *NodeReadyError
		if errors.As(err, &ready) {
			fmt.Fprintf(stderr, "error execution phase kubelet-start: %v\nTo see the stack trace of this error execute with --v=5 or higher\n", err)
			return 1
		}
		fmt.Fprintf(stderr, "error execution phase preflight: couldn't validate the identity of the API Server: %v\n", err)
		return 1
	}
	if control && f.ExternalEtcd == nil { // an external etcd gains no member
		if err := f.joinEtcd(v); err != nil {
			fmt.Fprintf(stderr, "error execution phase control-plane-join/etcd: error creating local etcd static pod manifest file: %v\n", err)
			return 1
		}
	}
	if err := f.Cluster.KubeletUp(ctx, v.Name, v.BootID()); err != nil {
		fmt.Fprintf(stderr, "error execution phase kubelet-start: %v\n", err)
		return 1
	}
	if cv, ok := f.Cluster.(ControlPlaneVersions); ok && control && cluster != nil {
		if err := cv.SetStaticPods(ctx, v.Name, "v"+cluster.String()); err != nil {
			fmt.Fprintf(stderr, "error execution phase control-plane-prepare: %v\n", err)
			return 1
		}
	}
	v.mu.Lock()
	v.joined = true
	v.control = v.control || control
	v.mu.Unlock()
	fmt.Fprintln(stdout, "This node has joined the cluster:\n* Certificate signing request was sent to apiserver and a response was received.\n* The Kubelet was informed of the new secure connection details.")
	return 0
}

// klogWarning writes a warning line as kubeadm's klog does ("W1125 10:00:00.000000
// 4242 reset.go:140] msg").
func klogWarning(w io.Writer, where, msg string) {
	fmt.Fprintf(w, "W%s    4242 %s] %s\n", time.Now().UTC().Format("0102 15:04:05.000000"), where, msg)
}

// reset is kubeadm reset (v1.37, cmd/reset.go and phases/reset): without -f/--force it
// asks for confirmation and, with no terminal to answer, fails (exit 1). It reads this
// node's configuration from the cluster with admin.conf (control VMs only), which needs
// its Node: with the Node deleted it warns and goes on without it. Its
// remove-etcd-member phase removes the VM's etcd member only with that configuration (a
// refusal is a warning; the only member left is kept); either way the local etcd data
// is wiped and the cleanup stops the kubelet and the static pods, local etcd included,
// for good.
func (v *VM) reset(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := v.fleet
	force := false
	for _, a := range args {
		if a == "-f" || a == "--force" || a == "--force=true" {
			force = true
		}
	}
	v.mu.Lock()
	control := v.control
	v.mu.Unlock()
	haveConfig := false
	if control && f.Cluster != nil {
		exists, _, err := f.Cluster.Node(ctx, v.Name)
		switch {
		case err != nil:
			klogWarning(stderr, "reset.go:140", fmt.Sprintf("[reset] Unable to fetch the kubeadm-config ConfigMap from cluster: failed to get corresponding node: %v", err))
		case !exists:
			klogWarning(stderr, "reset.go:140", fmt.Sprintf("[reset] Unable to fetch the kubeadm-config ConfigMap from cluster: failed to get corresponding node: nodes %q not found", v.Name))
		default:
			haveConfig = true
		}
	}
	// The preflight phase, after the configuration was read.
	if !force {
		klogWarning(stderr, "preflight.go:55", "[reset] WARNING: Changes made to this host by 'kubeadm init' or 'kubeadm join' will be reverted.")
		fmt.Fprint(stdout, "[reset] Are you sure you want to proceed? [y/N]: ")
		fmt.Fprintln(stderr, "error execution phase preflight: won't proceed; the user didn't answer (Y|y) in order to continue\nTo see the stack trace of this error execute with --v=5 or higher")
		return 1
	}
	fmt.Fprintln(stdout, "[preflight] Running pre-flight checks")
	if f.ExternalEtcd != nil {
		// No local etcd: the remove-etcd-member phase leaves the membership alone.
		fmt.Fprintln(stdout, "[reset] No etcd config found. Assuming external etcd\n[reset] Please, manually reset etcd to prevent further issues")
	} else if f.localEtcd(v.Name) {
		if haveConfig {
			if err := f.leaveEtcd(v.Name); err != nil {
				klogWarning(stderr, "removeetcdmember.go:66", fmt.Sprintf("[reset] Failed to remove etcd member: %v, please manually remove this etcd member using etcdctl", err))
			}
		} else {
			klogWarning(stderr, "removeetcdmember.go:104", "[reset] No kubeadm config, using etcd pod spec to get data directory")
		}
		f.stopEtcd(v.Name)
		fmt.Fprintln(stdout, "[reset] Deleted contents of the etcd data directory: /var/lib/etcd")
	}
	v.kubelet.Lock()
	v.mu.Lock()
	joined := v.joined
	v.joined = false
	v.control = false // /etc/kubernetes/admin.conf is gone with the rest
	v.mu.Unlock()
	var err error
	if joined && f.Cluster != nil {
		err = f.Cluster.KubeletDown(ctx, v.Name)
	}
	v.kubelet.Unlock()
	if err != nil {
		fmt.Fprintf(stderr, "[reset] Stopping the kubelet service failed: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, "[reset] Stopping the kubelet service\n[reset] Deleting contents of directories: [/etc/kubernetes/manifests /var/lib/kubelet /etc/kubernetes/pki]")
	return 0
}

// MarkJoined records that the VM is a node of the cluster already (a lab built with its
// nodes registered).
func (v *VM) MarkJoined() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.joined = true
}

// rootFstab is the start of every VM's /etc/fstab.
func rootFstab() []string {
	return []string{"# /etc/fstab: static file system information.", "UUID=0f3c2b1a-0000-4000-8000-00000000f00d / ext4 rw,discard,errors=remount-ro 0 1"}
}

// blkid answers `blkid DEV` and `blkid -s TAG -o value DEV`: exit 2 without a filesystem.
func (v *VM) blkid(args []string, stdout io.Writer) int {
	tag := ""
	if len(args) == 5 && args[0] == "-s" && args[2] == "-o" && args[3] == "value" {
		tag, args = args[1], args[4:]
	}
	if len(args) != 1 {
		return 2
	}
	v.mu.Lock()
	fs, ok := v.disks[args[0]]
	v.mu.Unlock()
	if !ok {
		return 2
	}
	switch tag {
	case "":
		fmt.Fprintf(stdout, "%s: UUID=%q LABEL=%q TYPE=%q\n", args[0], fs.UUID, fs.Label, fs.Type)
	case "UUID":
		fmt.Fprintln(stdout, fs.UUID)
	case "TYPE":
		fmt.Fprintln(stdout, fs.Type)
	case "LABEL":
		fmt.Fprintln(stdout, fs.Label)
	default:
		return 2
	}
	return 0
}

// mkfs makes a filesystem; like the real ones run without a terminal, it refuses a device
// that has a filesystem unless forced (-F for ext4, -f for xfs).
func (v *VM) mkfs(typ string, args []string, stdout, stderr io.Writer) int {
	if typ != "ext4" && typ != "xfs" {
		fmt.Fprintf(stderr, "bash: mkfs.%s: command not found\n", typ)
		return 127
	}
	dev, force, label := args[len(args)-1], false, ""
	for i, a := range args[:len(args)-1] {
		switch {
		case a == "-F" || a == "-f":
			force = true
		case a == "-L" && i+1 < len(args)-1:
			label = args[i+1]
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if old, ok := v.disks[dev]; ok && !force {
		fmt.Fprintf(stderr, "%s contains a %s file system labelled '%s'\nProceed anyway? (y,N) \n", dev, old.Type, old.Label)
		return 1
	}
	for _, d := range v.mounts {
		if d == dev {
			fmt.Fprintf(stderr, "%s is mounted; will not make a filesystem here!\n", dev)
			return 1
		}
	}
	if v.disks == nil {
		v.disks = map[string]Filesystem{}
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	v.disks[dev] = Filesystem{Type: typ, Label: label, UUID: fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])}
	fmt.Fprintf(stdout, "Creating filesystem with 5242880 4k blocks\nWriting superblocks and filesystem accounting information: done\n")
	return 0
}

// mount answers `mount -a` (the fstab entries not mounted yet) and `mount DEV DIR`.
func (v *VM) mount(args []string, stderr io.Writer) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	switch {
	case len(args) == 1 && args[0] == "-a":
		if err := v.mountFstab(); err != nil {
			fmt.Fprintln(stderr, err)
			return 32
		}
	case len(args) == 2:
		if _, ok := v.disks[args[0]]; !ok {
			fmt.Fprintf(stderr, "mount: %s: wrong fs type, bad option, bad superblock on %s, missing codepage or helper program, or other error.\n", args[1], args[0])
			return 32
		}
		if v.mounts == nil {
			v.mounts = map[string]string{}
		}
		v.mounts[args[1]] = args[0]
	default:
		fmt.Fprintln(stderr, "mount: bad usage")
		return 1
	}
	return 0
}

// mountFstab mounts the fstab entries (UUID=... lines) not mounted yet, as the boot and
// mount -a do; v.mu is held.
func (v *VM) mountFstab() error {
	var errs []error
	for _, l := range v.fstab {
		f := strings.Fields(l)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if _, ok := v.mounts[f[1]]; ok {
			continue
		}
		dev := ""
		for d, fs := range v.disks {
			if "UUID="+fs.UUID == f[0] || d == f[0] {
				dev = d
			}
		}
		if dev == "" {
			errs = append(errs, fmt.Errorf("mount: %s: can't find %s.", f[1], f[0]))
			continue
		}
		if v.mounts == nil {
			v.mounts = map[string]string{}
		}
		v.mounts[f[1]] = dev
	}
	return errors.Join(errs...)
}

// debian is a Debian release as /etc/os-release names it.
type debian struct{ version, codename string }

// debianRelease is the release of an image named like "debian-13.0-trixie"; bookworm
// (Debian 12) for a name that says nothing else.
func debianRelease(image string) debian {
	parts := strings.Split(image, "-")
	if len(parts) == 3 && parts[0] == "debian" {
		return debian{version: strings.SplitN(parts[1], ".", 2)[0], codename: parts[2]}
	}
	return debian{version: "12", codename: "bookworm"}
}

// osRelease is /etc/os-release of the image's release.
func osRelease(image string) string {
	d := debianRelease(image)
	return fmt.Sprintf(`PRETTY_NAME="Debian GNU/Linux %[1]s (%[2]s)"
NAME="Debian GNU/Linux"
VERSION_ID="%[1]s"
VERSION="%[1]s (%[2]s)"
VERSION_CODENAME=%[2]s
ID=debian
HOME_URL="https://www.debian.org/"
`, d.version, d.codename)
}
