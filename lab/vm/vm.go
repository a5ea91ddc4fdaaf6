// Package vm is the lab's simulated VMs: each server of the lab cloud gets an SSH server
// (golang.org/x/crypto/ssh) on its own loopback address, with its own host key, that runs
// a fixed set of commands with realistic output: hostname, boot id, reboots that drop the
// session and come back with a new boot id, kubeadm token/join/reset against the lab's
// Kubernetes control plane, apt-get and the provisioning commands of the cluster config.
package vm

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"example.com/cookbook/lab"
	"example.com/cookbook/lab/cloud"
)

// Cluster is the Kubernetes side of the simulated VMs.
type Cluster interface {
	// Kubeadm runs the real kubeadm binary for a control VM (node, address) with args
	// (what follows "kubeadm": token create|list|delete, init phase upload-certs),
	// against the cluster's API server and PKI; its output goes to stdout and stderr.
	// It returns kubeadm's exit code, and an error only if kubeadm could not be run.
	Kubeadm(ctx context.Context, node, address string, args []string, stdout, stderr io.Writer) (int, error)
	// DownloadCerts is the download-certs phase of a control-plane join: nil if the
	// certificate key opens the certificates kubeadm uploaded and their owning token is
	// not expired, else kubeadm's error (never carrying the key).
	DownloadCerts(ctx context.Context, key string) error
	// Join checks the token and registers the VM's Node (Ready).
	Join(ctx context.Context, j JoinRequest) error
	// KubeletDown makes the node NotReady (reboot, kubeadm reset).
	KubeletDown(ctx context.Context, node string) error
	// KubeletUp makes a registered node Ready again with the boot id.
	KubeletUp(ctx context.Context, node, bootID string) error
	// Node reports whether the Node of that name exists, and whether it is Ready.
	Node(ctx context.Context, name string) (exists, ready bool, err error)
	// NotReadyControlPlanes lists the Nodes labelled node-role.kubernetes.io/control-plane
	// whose Ready condition is not True (kubeadm upgrade's health check).
	NotReadyControlPlanes(ctx context.Context) ([]string, error)
}

// NodeReadyError is kubeadm join's refusal (kubelet-start phase) to join over a Node of
// the same name that is Ready.
type NodeReadyError struct{ Node string }

func (e *NodeReadyError) Error() string {
	return fmt.Sprintf("a Node with name %q and status \"Ready\" already exists in the cluster. You must delete the existing Node or change the name of this new joining Node", e.Node)
}

// JoinRequest is what a `kubeadm join` on a VM asks of the cluster.
type JoinRequest struct {
	// Node is the VM's hostname, the Node's name.
	Node string
	// Token is the bootstrap token of the command line (id.secret).
	Token string
	// ControlPlane is set by --control-plane.
	ControlPlane bool
	// Address is the VM's address, reported as the Node's InternalIP.
	Address string
	// BootID is the VM's boot id, reported in status.nodeInfo.bootID.
	BootID string
	// KubeletVersion is the installed kubelet's version ("v1.37.2").
	KubeletVersion string
}

// Fleet runs the simulated VMs. It implements cloud.Machines.
type Fleet struct {
	// Port is the SSH port of every VM (distinct loopback addresses share it).
	Port int
	// MetricsPort, if not zero, is the port of every VM's node exporter (GET /metrics on
	// its address while it is up; see MetricsTargets and SetStuckProcs).
	MetricsPort int
	// Domain makes `hostname -f` print name.domain.
	Domain string
	// OperatorKeys are accepted on every VM besides the server's key pair.
	OperatorKeys []string
	// Users that may log in; any user if empty.
	Users []string
	// Cluster, if set, backs kubeadm and the kubelet.
	Cluster Cluster
	// DownTime is how long a reboot keeps the VM down; 2s if zero.
	DownTime time.Duration
	// Programs are extra commands (argv[0]) that succeed, for provisioning steps.
	Programs []string
	// CloudInitTime is how long cloud-init runs after a VM's first boot (its SSH answers
	// from the start): until then /var/lib/cloud/instance/boot-finished is missing and
	// provisioning commands fail (apt-get finds the dpkg lock held, the others race with
	// cloud-init), as they would on a real VM. Zero: cloud-init is done at once.
	CloudInitTime time.Duration
	// HangReboot makes `systemctl reboot` hang on these VMs (by name), to test the
	// hard-reboot fallback: the session stays open until the VM is rebooted hard.
	HangReboot map[string]bool
	// IsControlPlane tells which booted machines are control-plane hosts (they can run
	// `kubeadm token create`). Nil means Metadata["cookbook-role"] == "control". A VM
	// that joins with --control-plane, or is marked with MarkControlPlane, is one too.
	IsControlPlane func(m cloud.Machine) bool
	// ExternalEtcd, if set, makes the lab's etcd external (see etcd.go): its members are
	// the VMs added with AddEtcdMember, asked with these certificate paths.
	ExternalEtcd *EtcdCerts
	// KubeVersion is the Kubernetes version (X.Y.Z) the VMs' kubeadm, kubelet and
	// kubectl packages are installed at; the lab's if empty. The lab's apt repository
	// offers it and its next patch.
	KubeVersion string
	// Log receives lines; nil discards.
	Log *slog.Logger

	mu       sync.Mutex
	vms      map[string]*VM
	history  []Record
	failJoin map[string]bool
	preset   map[string]map[string]Filesystem
	etcd     etcdState
	// before is the test hook set with BeforeCommand.
	before func(vm string, args []string) (drop bool)
}

var _ cloud.Machines = (*Fleet)(nil)

// BeforeCommand sets a hook called with each command line a VM is about to run (its argv
// without sudo), from the SSH session that asked for it; nil removes it. It lets a test act
// at an exact moment, e.g. kill the cookbook process just as `systemctl reboot` arrives.
// If the hook returns true the command is not run (nor recorded) and the session drops
// without an exit status, as when the connection is lost before the command starts.
func (f *Fleet) BeforeCommand(hook func(vm string, args []string) (drop bool)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.before = hook
}

// Record is a command a VM ran.
type Record struct {
	Time     time.Time
	VM       string
	Argv     []string
	ExitCode int
}

// VM is one simulated VM.
type VM struct {
	ID, Name, Address string
	// Image is the name of the image the VM was booted from: what /etc/os-release says.
	Image      string
	fleet      *Fleet
	signer     ssh.Signer
	authorized map[string]bool

	// kubelet serialises what the VM's kubelet does to its Node (join, reboot, reset,
	// delete), so that the last thing done to the VM is what its Node shows: a kubeadm
	// reset run as soon as SSH answers after a reboot is not undone by the kubelet of that
	// boot coming up a moment later.
	kubelet sync.Mutex

	mu     sync.Mutex
	bootID string
	ln     net.Listener
	exp    *lab.NodeExporter // its node exporter while up, if the fleet has a MetricsPort
	conns  map[net.Conn]bool
	up     bool
	off    bool // powered off: only a hard reboot starts it
	joined bool
	gen    int
	down   chan struct{} // closed when the current incarnation stops
	// running mirrors up for readers that hold the fleet's lock (taking v.mu under it
	// would invert the lock order reboot uses).
	running atomic.Bool
	control bool
	// disks are the filesystems on the VM's block devices, by device; fstab is
	// /etc/fstab's lines (kept over reboots); mounts are the mounted filesystems by
	// mount point (gone at a reboot, when the fstab entries are mounted again).
	disks  map[string]Filesystem
	fstab  []string
	mounts map[string]string
	// bootFinished is when cloud-init finishes, after the first boot: the file stays on
	// disk over reboots.
	bootFinished time.Time
	pkgs         map[string]string // installed package versions that differ from the fleet's
	held         map[string]bool   // packages apt-mark holds
	noKubeRepo   bool              // the Kubernetes apt repository is missing from its sources
	stuckProcs   int               // processes stuck on NFS, reported on /metrics until a reboot

	// unconfigured are the packages an interrupted dpkg left unpacked and not configured
	// (their dpkg status: half-configured), until dpkg --configure -a.
	unconfigured map[string]bool
}

func (f *Fleet) log() *slog.Logger {
	if f.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return f.Log
}

func (f *Fleet) downTime() time.Duration {
	if f.DownTime > 0 {
		return f.DownTime
	}
	return 2 * time.Second
}

// Boot implements cloud.Machines: it starts the VM's SSH server and returns its host key
// fingerprint line as cloud-init prints it.
func (f *Fleet) Boot(ctx context.Context, m cloud.Machine) ([]string, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	v := &VM{ID: m.ID, Name: m.Name, Address: m.Address, Image: m.Image, fleet: f, signer: signer, authorized: map[string]bool{}, conns: map[net.Conn]bool{}}
	if f.IsControlPlane != nil {
		v.control = f.IsControlPlane(m)
	} else {
		v.control = m.Metadata["cookbook-role"] == "control"
	}
	for _, k := range append(append([]string{}, m.AuthorizedKeys...), f.OperatorKeys...) {
		pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k))
		if err == nil {
			v.authorized[string(pk.Marshal())] = true
		}
	}
	f.mu.Lock()
	v.bootFinished = time.Now().Add(f.CloudInitTime)
	for dev, fs := range f.preset[m.Name] {
		if v.disks == nil {
			v.disks = map[string]Filesystem{}
		}
		v.disks[dev] = fs
	}
	if f.vms == nil {
		f.vms = map[string]*VM{}
	}
	if old, ok := f.vms[m.ID]; ok {
		old.stop()
	}
	f.vms[m.ID] = v
	f.mu.Unlock()
	if err := v.start(newBootID()); err != nil {
		return nil, err
	}
	return []string{v.HostKeyLine()}, nil
}

// HostKeyLine is the VM's host key as cloud-init prints it.
func (v *VM) HostKeyLine() string {
	return fmt.Sprintf("256 %s root@%s (ED25519)", ssh.FingerprintSHA256(v.signer.PublicKey()), v.Name)
}

// CloudInitDone reports whether cloud-init has finished on the VM (boot-finished exists).
func (v *VM) CloudInitDone() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return !time.Now().Before(v.bootFinished)
}

// PublicKey is the VM's host key.
func (v *VM) PublicKey() ssh.PublicKey { return v.signer.PublicKey() }

// BootID is the VM's current boot id.
func (v *VM) BootID() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.bootID
}

// Reboot implements cloud.Machines.
func (f *Fleet) Reboot(ctx context.Context, id string, hard bool) error {
	v := f.VM(id)
	if v == nil {
		return fmt.Errorf("no VM %s", id)
	}
	v.reboot(hard)
	return nil
}

// Stop implements cloud.Machines (Nova's os-stop; PowerOff is the same without the
// cloud): the VM goes down (SSH stops answering, its Node turns NotReady and the
// deletions of its pods no longer finish) and stays down until a hard reboot.
func (f *Fleet) Stop(ctx context.Context, id string) error {
	v := f.VM(id)
	if v == nil {
		return fmt.Errorf("no VM %s", id)
	}
	v.kubelet.Lock()
	defer v.kubelet.Unlock()
	v.mu.Lock()
	joined := v.joined
	v.off = true
	v.mu.Unlock()
	v.stop() // also when down for a reboot: it then does not come back
	if joined && f.Cluster != nil {
		if err := f.Cluster.KubeletDown(ctx, v.Name); err != nil {
			return fmt.Errorf("vm %s: node down: %w", v.Name, err)
		}
	}
	f.log().Info("vm powered off", "vm", v.Name)
	return nil
}

// Delete implements cloud.Machines.
func (f *Fleet) Delete(ctx context.Context, id string) error {
	f.mu.Lock()
	v := f.vms[id]
	delete(f.vms, id)
	f.mu.Unlock()
	if v != nil {
		v.kubelet.Lock()
		defer v.kubelet.Unlock()
		v.mu.Lock()
		joined := v.joined
		v.mu.Unlock()
		v.stop()
		if joined && f.Cluster != nil {
			_ = f.Cluster.KubeletDown(ctx, v.Name)
		}
	}
	return nil
}

// FailJoins makes `kubeadm join` fail on the VM of a name (a container runtime that is
// not running), or succeed again.
func (f *Fleet) FailJoins(name string, fail bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failJoin == nil {
		f.failJoin = map[string]bool{}
	}
	f.failJoin[name] = fail
}

func (f *Fleet) joinFails(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failJoin[name]
}

// Filesystem is what is on a block device of a VM.
type Filesystem struct{ Type, UUID, Label string }

// SetFilesystem puts a filesystem on a block device of the VM (a volume that had one).
func (v *VM) SetFilesystem(dev string, fs Filesystem) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.disks == nil {
		v.disks = map[string]Filesystem{}
	}
	v.disks[dev] = fs
}

// Mounted returns the device mounted at a mount point, if any.
func (v *VM) Mounted(mountPoint string) (string, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	dev, ok := v.mounts[mountPoint]
	return dev, ok
}

// Fstab returns the lines of the VM's /etc/fstab.
func (v *VM) Fstab() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append(rootFstab(), v.fstab...)
}

// PresetFilesystem puts a filesystem on a block device of the VMs booted from now on with
// that name (a volume that had one).
func (f *Fleet) PresetFilesystem(name, dev string, fs Filesystem) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.preset == nil {
		f.preset = map[string]map[string]Filesystem{}
	}
	if f.preset[name] == nil {
		f.preset[name] = map[string]Filesystem{}
	}
	f.preset[name][dev] = fs
}

// SetCloudInitTime sets CloudInitTime for the VMs booted from now on.
func (f *Fleet) SetCloudInitTime(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.CloudInitTime = d
}

// VM returns the VM of a server id, or nil.
func (f *Fleet) VM(id string) *VM {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.vms[id]
}

// History returns every command run, in order.
func (f *Fleet) History() []Record {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Record(nil), f.history...)
}

// Close stops every VM.
func (f *Fleet) Close() {
	f.mu.Lock()
	vms := f.vms
	f.vms = nil
	f.mu.Unlock()
	for _, v := range vms {
		v.stop()
	}
}

func (f *Fleet) record(vm string, argv []string, code int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.history = append(f.history, Record{Time: time.Now(), VM: vm, Argv: argv, ExitCode: code})
}

func newBootID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func (v *VM) start(bootID string) error {
	addr := net.JoinHostPort(v.Address, strconv.Itoa(v.fleet.Port))
	var ln net.Listener
	var err error
	// The port may still be held by the previous incarnation for a moment.
	for i := 0; i < 50; i++ {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("vm %s: listen on %s: %w", v.Name, addr, err)
	}
	exp, err := v.startExporter()
	if err != nil {
		ln.Close()
		return err
	}
	v.mu.Lock()
	v.ln, v.exp, v.up, v.bootID = ln, exp, true, bootID
	v.running.Store(true)
	v.down = make(chan struct{})
	v.gen++
	v.mu.Unlock()
	go v.serve(ln)
	return nil
}

// stop takes the VM down: its listener and every session.
func (v *VM) stop() {
	v.mu.Lock()
	if v.up {
		close(v.down)
	}
	v.up = false
	v.running.Store(false)
	v.gen++
	ln, exp := v.ln, v.exp
	v.ln, v.exp = nil, nil
	conns := v.conns
	v.conns = map[net.Conn]bool{}
	v.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	if exp != nil {
		exp.Close()
	}
	for c := range conns {
		c.Close()
	}
}

// reboot takes the VM down now and brings it back with a new boot id after DownTime. A
// hard reboot also starts a powered-off VM.
func (v *VM) reboot(hard bool) {
	v.kubelet.Lock()
	defer v.kubelet.Unlock()
	v.mu.Lock()
	if !v.up && !(hard && v.off) {
		v.mu.Unlock()
		return
	}
	v.off = false
	joined := v.joined
	v.mu.Unlock()
	v.stop()
	v.mu.Lock()
	gen := v.gen
	v.mu.Unlock()
	f := v.fleet
	if joined && f.Cluster != nil {
		if err := f.Cluster.KubeletDown(context.Background(), v.Name); err != nil {
			f.log().Warn("node not taken down for the reboot", "vm", v.Name, "err", err)
		}
	}
	f.log().Info("vm rebooting", "vm", v.Name)
	go func() {
		time.Sleep(f.downTime())
		// Held until the kubelet is up: a command run over SSH as soon as the VM answers
		// (kubeadm reset) acts on the Node after it.
		v.kubelet.Lock()
		defer v.kubelet.Unlock()
		v.mu.Lock()
		stale := v.gen != gen || f.VM(v.ID) != v
		v.mu.Unlock()
		if stale {
			return
		}
		id := newBootID()
		v.mu.Lock()
		v.mounts = nil
		v.stuckProcs = 0   // the reboot ended them
		_ = v.mountFstab() // what cannot be mounted is not, as with nofail
		v.mu.Unlock()
		if err := v.start(id); err != nil {
			f.log().Error("vm did not come back", "vm", v.Name, "err", err)
			return
		}
		if joined && f.Cluster != nil {
			if err := f.Cluster.KubeletUp(context.Background(), v.Name, id); err != nil {
				f.log().Warn("node not back after the reboot", "vm", v.Name, "err", err)
			}
		}
		f.log().Info("vm back", "vm", v.Name, "boot_id", id)
	}()
}

func (v *VM) serve(ln net.Listener) {
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if len(v.fleet.Users) > 0 && !contains(v.fleet.Users, meta.User()) {
				return nil, fmt.Errorf("user %s not allowed", meta.User())
			}
			if v.authorized[string(key.Marshal())] {
				return nil, nil
			}
			return nil, errors.New("key not authorized")
		},
	}
	cfg.AddHostKey(v.signer)
	for {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		v.mu.Lock()
		if !v.up {
			v.mu.Unlock()
			nc.Close()
			continue
		}
		v.conns[nc] = true
		v.mu.Unlock()
		go v.handle(nc, cfg)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (v *VM) handle(nc net.Conn, cfg *ssh.ServerConfig) {
	defer func() {
		v.mu.Lock()
		delete(v.conns, nc)
		v.mu.Unlock()
		nc.Close()
	}()
	sc, chans, reqs, err := ssh.NewServerConn(nc, cfg)
	if err != nil {
		return
	}
	defer sc.Close()
	go func() {
		for r := range reqs {
			if r.WantReply {
				r.Reply(r.Type == "keepalive@openssh.com", nil)
			}
		}
	}()
	for nch := range chans {
		if nch.ChannelType() != "session" {
			nch.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, creqs, err := nch.Accept()
		if err != nil {
			continue
		}
		go v.session(ch, creqs)
	}
}

type exitStatus struct{ Status uint32 }

func (v *VM) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	for r := range reqs {
		switch r.Type {
		case "exec":
			var p struct{ Command string }
			if err := ssh.Unmarshal(r.Payload, &p); err != nil {
				r.Reply(false, nil)
				return
			}
			r.Reply(true, nil)
			code, drop := v.exec(p.Command, ch, ch.Stderr())
			if drop {
				return // the session drops without an exit status, as in a reboot
			}
			ch.SendRequest("exit-status", false, ssh.Marshal(exitStatus{uint32(code)}))
			return
		case "env", "pty-req":
			r.Reply(true, nil)
		case "shell":
			r.Reply(false, nil)
		default:
			if r.WantReply {
				r.Reply(false, nil)
			}
		}
	}
}

// MarkControlPlane makes the VM a control-plane host (it can run kubeadm token create).
func (v *VM) MarkControlPlane() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.control = true
}

// downChan is closed when the VM's current incarnation stops.
func (v *VM) downChan() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.down
}

// Joined reports whether the VM ran kubeadm join.
func (v *VM) Joined() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.joined
}

// Names returns the names of the running VMs, sorted.
func (f *Fleet) Names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, v := range f.vms {
		out = append(out, v.Name)
	}
	sort.Strings(out)
	return out
}

// OpenConns is the number of SSH connections open to the VM now: a client that keeps
// its connections holds one each until it closes them (or its process ends).
func (v *VM) OpenConns() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.conns)
}
