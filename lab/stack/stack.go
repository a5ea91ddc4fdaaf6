// Package stack is the whole lab in one piece: the Kubernetes control plane, the
// OpenStack simulator and its simulated VMs, set up as a cluster named toolsbeta shaped
// like the Toolforge one (control nodes, workers, NFS workers), with the files cookbook
// needs to use it: a configuration, a clouds.yaml, a kubeconfig, an SSH key and a
// known_hosts file.
package stack

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/servers"
	"golang.org/x/crypto/ssh"
	corev1 "k8s.io/api/core/v1"
	utilversion "k8s.io/apimachinery/pkg/util/version"

	"example.com/cookbook/lab"
	"example.com/cookbook/lab/cloud"
	"example.com/cookbook/lab/vm"
)

// Options shape the lab.
type Options struct {
	// Dir holds the lab's files (created if missing).
	Dir string
	// Cluster is the cluster's name; "toolsbeta" if empty.
	Cluster string
	// Controls, Workers and NFSWorkers are the numbers of nodes; 3, 4 and 2 if zero
	// (use -1 for none).
	Controls, Workers, NFSWorkers int
	// ExternalEtcd, if positive, is the number of etcd VMs of an external etcd
	// (<prefix>-etcd-N, no Kubernetes nodes) that hold the etcd membership instead of the
	// control VMs; the configuration then has an etcd.external section naming them
	// (EtcdCerts). Zero: kubeadm's stacked etcd on the control VMs.
	ExternalEtcd int
	// SSHPort is the port every VM's SSH server listens on; a free one if zero.
	SSHPort int
	// MetricsPort is the port every VM's node exporter (GET /metrics, the processes
	// stuck on NFS; Fleet.MetricsTargets) listens on; a free one if zero.
	MetricsPort int
	// CloudAddr is where the OpenStack API listens; "127.0.0.1:0" if empty.
	CloudAddr string
	// RebootDownTime is how long a VM stays down when it reboots; 2s if zero.
	RebootDownTime time.Duration
	// BuildTime is how long a new server stays in BUILD; 1s if zero.
	BuildTime time.Duration
	// CloudInitTime is how long cloud-init runs on a new VM after its SSH answers
	// (provisioning commands fail until then); 3s if zero, none if negative.
	CloudInitTime time.Duration
	// KubernetesVersion is the cluster's Kubernetes version (X.Y.Z or vX.Y.Z): what the
	// kubelets report, the installed kubeadm, kubelet and kubectl packages, the
	// kubeadm-config ClusterConfiguration's kubernetesVersion and the control nodes'
	// static pods. The lab's (the API server binary's) if empty.
	KubernetesVersion string
	// SampleWorkload applies the lab's sample workload in namespace "sample".
	SampleWorkload bool
	// Workload, if it has Deployments, is applied once the nodes are up, and Up returns
	// once its pods are Running and its PDBs count them (WorkloadTimeout, 30 minutes if
	// zero).
	Workload        lab.Workload
	WorkloadTimeout time.Duration
	// AuditReads records read requests in the API server's audit log too (lab.Options).
	AuditReads bool
	// Log receives progress; nil discards.
	Log *slog.Logger
}

// Stack is a running lab.
type Stack struct {
	CP    *lab.ControlPlane
	Cloud *cloud.Cloud
	Fleet *vm.Fleet
	Dir   string
	// Cluster is the cluster's name in the configuration.
	Cluster string
	// The files cookbook uses.
	ConfigPath, CloudsPath, KeyPath, KnownHostsPath, AuditPath string
	// Prefix is the name prefix of the cluster's servers ("toolsbeta-test-k8s").
	Prefix string
	// EtcdHosts are the external etcd's VMs (none with stacked etcd).
	EtcdHosts []string

	password string // of the cloud's user, in clouds.yaml
}

// EtcdCerts are the certificate paths of the lab's external etcd hosts, as the
// configuration names them.
var EtcdCerts = vm.EtcdCerts{CACert: "/etc/etcd/ssl/ca.pem", Cert: "/etc/etcd/ssl/client.pem", Key: "/etc/etcd/ssl/client.key"}

// Roles of the lab cluster: name -> (prefix suffix, labels, taints, control plane).
var roles = []struct {
	name, suffix, policy string
	labels               map[string]string
	control              bool
}{
	{"control", "control", "anti-affinity", nil, true},
	{"worker", "worker", "soft-anti-affinity", nil, false},
	{"worker-nfs", "worker-nfs", "soft-anti-affinity", map[string]string{"toolforge.org/nfs-mounted": "true", "kubernetes.wmcloud.org/nfs-mounted": "true"}, false},
	{"ingress", "ingress", "anti-affinity", map[string]string{"toolforge.org/ingress-worker": "true"}, false},
}

func count(n, def int) int {
	switch {
	case n < 0:
		return 0
	case n == 0:
		return def
	}
	return n
}

// Up starts the lab. Its cloud, VMs and nodes are new: a lab starts afresh every time.
func Up(ctx context.Context, opts Options) (s *Stack, err error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Cluster == "" {
		opts.Cluster = "toolsbeta"
	}
	if opts.BuildTime == 0 {
		opts.BuildTime = time.Second
	}
	if opts.RebootDownTime == 0 {
		opts.RebootDownTime = 2 * time.Second
	}
	if opts.CloudInitTime == 0 {
		opts.CloudInitTime = 3 * time.Second
	}
	if opts.CloudAddr == "" {
		opts.CloudAddr = "127.0.0.1:0"
	}
	kubeVersion := strings.TrimPrefix(opts.KubernetesVersion, "v")
	if kubeVersion == "" {
		kubeVersion = strings.TrimPrefix(lab.PinnedVersions().Kubernetes, "v")
	}
	if _, err := utilversion.ParseSemantic(kubeVersion); err != nil {
		return nil, fmt.Errorf("kubernetes version %q: %w", opts.KubernetesVersion, err)
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("lab dir: %w", err)
	}
	s = &Stack{Dir: dir, Cluster: opts.Cluster, Prefix: opts.Cluster + "-test-k8s",
		ConfigPath: filepath.Join(dir, "config.yaml"), CloudsPath: filepath.Join(dir, "clouds.yaml"),
		KeyPath: filepath.Join(dir, "id_ed25519"), KnownHostsPath: filepath.Join(dir, "known_hosts"), AuditPath: filepath.Join(dir, "audit.log")}
	defer func() {
		if err != nil {
			s.Down()
		}
	}()

	log.Info("starting the Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)")
	kdir := filepath.Join(dir, "k8s")
	_ = os.RemoveAll(kdir)
	if s.CP, err = lab.StartControlPlane(ctx, lab.Options{Dir: kdir, Name: "lab-" + opts.Cluster, AuditReads: opts.AuditReads}); err != nil {
		return s, err
	}
	if err := s.CP.SetClusterVersion(ctx, "v"+kubeVersion); err != nil {
		return s, err
	}

	pubLine, err := writeKey(s.KeyPath)
	if err != nil {
		return s, err
	}
	port := opts.SSHPort
	if port == 0 {
		if port, err = freePort(); err != nil {
			return s, err
		}
	}
	metricsPort := opts.MetricsPort
	if metricsPort == 0 {
		if metricsPort, err = freePort(); err != nil {
			return s, err
		}
	}
	s.Fleet = &vm.Fleet{Port: port, MetricsPort: metricsPort, OperatorKeys: []string{pubLine}, Cluster: &vm.KubeCluster{CP: s.CP}, DownTime: opts.RebootDownTime, CloudInitTime: max(opts.CloudInitTime, 0), KubeVersion: kubeVersion, Log: log}
	if opts.ExternalEtcd > 0 {
		certs := EtcdCerts
		s.Fleet.ExternalEtcd = &certs
	}
	password := randomHex(12)
	s.password = password
	seed := cloud.Seed{
		Project: opts.Cluster,
		Flavors: []cloud.Flavor{
			{ID: "g4.cores4.ram8.disk20", Name: "g4.cores4.ram8.disk20", VCPUs: 4, RAM: 8192, Disk: 20},
			{ID: "g4.cores2.ram4.disk20", Name: "g4.cores2.ram4.disk20", VCPUs: 2, RAM: 4096, Disk: 20},
		},
		Images: []cloud.Image{
			{ID: "7b5ac6e3-7a9a-4d1e-9a3c-2c6f1b1d0001", Name: "debian-12.0-bookworm", Created: time.Now().Add(-24 * time.Hour)},
			{ID: "7b5ac6e3-7a9a-4d1e-9a3c-2c6f1b1d0002", Name: "debian-13.0-trixie", Created: time.Now().Add(-time.Hour)},
		},
		Networks:       []cloud.Named{{ID: "a1b2c3d4-0000-4000-8000-000000000001", Name: "lan-flat-cloudinstances2b"}},
		SecurityGroups: []cloud.Named{{ID: "a1b2c3d4-0000-4000-8000-000000000002", Name: "toolsbeta-k8s-full-connectivity"}},
		KeyPairs:       []cloud.KeyPair{{Name: "toolsbeta-cookbook", PublicKey: pubLine}},
		Users:          []cloud.User{{Name: "novaadmin", Password: password}},
	}
	admin := map[string]http.HandlerFunc{"commands": s.commandsHandler}
	s.Cloud, err = cloud.New(opts.CloudAddr, seed, cloud.Options{
		BuildTime: opts.BuildTime, DeleteTime: 500 * time.Millisecond, RebootTime: time.Second,
		Machines: s.Fleet, Hypervisors: 12, Admin: admin, Log: log,
	})
	if err != nil {
		return s, err
	}

	groups := map[string]string{}
	for _, r := range roles {
		groups[r.name] = s.Cloud.AddGroup(s.Prefix+"-"+r.suffix, r.policy).ID
	}
	// The VMs and their nodes are created side by side (a few at a time: a lab of hundreds
	// of workers comes up in minutes); known_hosts and the control nodes keep their order.
	type member struct {
		name    string
		role    int
		control bool
		etcd    bool // an external etcd host, no node
		known   string
	}
	var members []*member
	wants := map[string]int{"control": count(opts.Controls, 3), "worker": count(opts.Workers, 4), "worker-nfs": count(opts.NFSWorkers, 2), "ingress": 0}
	for ri, r := range roles {
		for i := 1; i <= wants[r.name]; i++ {
			members = append(members, &member{name: fmt.Sprintf("%s-%s-%d", s.Prefix, r.suffix, i), role: ri, control: r.control})
		}
	}
	for i := 1; i <= opts.ExternalEtcd; i++ {
		m := &member{name: fmt.Sprintf("%s-etcd-%d", s.Prefix, i), etcd: true}
		s.EtcdHosts = append(s.EtcdHosts, m.name)
		members = append(members, m)
	}
	create := func(m *member) error {
		if m.etcd {
			log.Info("creating external etcd VM", "name", m.name)
			srv, err := s.Cloud.AddServer(ctx, cloud.Server{
				Name: m.name, FlavorID: "g4.cores2.ram4.disk20", ImageID: seed.Images[0].ID, Network: seed.Networks[0].Name,
				KeyName: "toolsbeta-cookbook", SecurityGroups: []string{seed.SecurityGroups[0].Name},
				Metadata: map[string]string{"cookbook-cluster": opts.Cluster, "cookbook-role": "etcd"},
			})
			if err != nil {
				return err
			}
			v := s.Fleet.VM(srv.ID)
			s.Fleet.AddEtcdMember(v)
			m.known = fmt.Sprintf("[%s]:%d %s", srv.Address, port, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(v.PublicKey()))))
			return nil
		}
		r := roles[m.role]
		log.Info("creating VM and node", "name", m.name)
		flavor := "g4.cores4.ram8.disk20"
		if r.control {
			flavor = "g4.cores2.ram4.disk20"
		}
		srv, err := s.Cloud.AddServer(ctx, cloud.Server{
			Name: m.name, FlavorID: flavor, ImageID: seed.Images[0].ID, Network: seed.Networks[0].Name,
			KeyName: "toolsbeta-cookbook", Group: groups[r.name], SecurityGroups: []string{seed.SecurityGroups[0].Name},
			Metadata: map[string]string{"cookbook-cluster": opts.Cluster, "cookbook-role": r.name},
		})
		if err != nil {
			return err
		}
		v := s.Fleet.VM(srv.ID)
		spec := lab.NodeSpec{Name: m.name, Labels: r.labels, BootID: v.BootID(), Address: srv.Address, KubeletVersion: "v" + kubeVersion}
		if r.control {
			spec.Labels = map[string]string{"node-role.kubernetes.io/control-plane": ""}
			spec.Taints = []corev1.Taint{{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule}}
		}
		if err := s.CP.AddNode(ctx, spec); err != nil {
			return err
		}
		if r.control {
			if err := s.CP.SetStaticPods(ctx, m.name, "v"+kubeVersion); err != nil {
				return err
			}
		}
		v.MarkJoined()
		if r.control && opts.ExternalEtcd <= 0 {
			s.Fleet.AddEtcdMember(v) // kubeadm's stacked etcd: a member per control node
		}
		m.known = fmt.Sprintf("[%s]:%d %s", srv.Address, port, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(v.PublicKey()))))
		return nil
	}
	var wg sync.WaitGroup
	var errOnce sync.Once
	var firstErr error
	sem := make(chan struct{}, 16)
	for _, m := range members {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := create(m); err != nil {
				errOnce.Do(func() { firstErr = err })
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return s, firstErr
	}
	var known []string
	for _, m := range members {
		known = append(known, m.known)
	}
	if err := os.WriteFile(s.KnownHostsPath, []byte(strings.Join(known, "\n")+"\n"), 0o600); err != nil {
		return s, err
	}
	if opts.SampleWorkload {
		log.Info("applying the sample workload", "namespace", "sample")
		if err := s.CP.ApplySampleWorkload(ctx, "sample"); err != nil {
			return s, err
		}
	}
	if w := opts.Workload; w.Deployments > 0 {
		if w.Namespace == "" {
			w.Namespace = "workload"
		}
		log.Info("applying the workload", "namespace", w.Namespace, "deployments", w.Deployments, "pods", w.Pods())
		started := time.Now()
		if err := s.CP.ApplyWorkload(ctx, w); err != nil {
			return s, err
		}
		timeout := opts.WorkloadTimeout
		if timeout == 0 {
			timeout = 30 * time.Minute
		}
		lastLog := time.Now()
		err := s.CP.WaitWorkload(ctx, w, timeout, func(ready int) {
			if time.Since(lastLog) >= 10*time.Second {
				log.Info("workload coming up", "ready", ready, "of", w.Pods(), "after", time.Since(started).Round(time.Second))
				lastLog = time.Now()
			}
		})
		if err != nil {
			return s, err
		}
		log.Info("workload up", "pods", w.Pods(), "in", time.Since(started).Round(time.Second))
	}
	if err := s.writeFiles(password, port); err != nil {
		return s, err
	}
	return s, nil
}

// PowerOff stops the server of a name through the cloud's compute API (os-stop), as an
// operator or a failing hypervisor does: its VM stops answering SSH, its Node turns
// NotReady, and the pods on it stay as they are (kwok no longer acts on them, as a dead
// kubelet does not).
func (s *Stack) PowerOff(ctx context.Context, name string) error {
	var id string
	for _, srv := range s.Cloud.Servers() {
		if srv.Name == name {
			id = srv.ID
		}
	}
	if id == "" {
		return fmt.Errorf("power off %s: no such server", name)
	}
	provider, err := openstack.AuthenticatedClient(ctx, gophercloud.AuthOptions{
		IdentityEndpoint: s.Cloud.AuthURL(), Username: "novaadmin", Password: s.password,
		DomainName: "Default", TenantName: s.Cluster,
	})
	if err != nil {
		return fmt.Errorf("power off %s: %w", name, err)
	}
	compute, err := openstack.NewComputeV2(provider, gophercloud.EndpointOpts{Region: "RegionOne"})
	if err != nil {
		return fmt.Errorf("power off %s: %w", name, err)
	}
	if err := servers.Stop(ctx, compute, id).ExtractErr(); err != nil {
		return fmt.Errorf("power off %s: %w", name, err)
	}
	return nil
}

// Env is the one export line that points cookbook at the lab.
func (s *Stack) Env() string {
	return fmt.Sprintf("export COOKBOOK_CONFIG=%s KUBECONFIG=%s OS_CLIENT_CONFIG_FILE=%s OS_CLOUD=%s", s.ConfigPath, s.CP.Kubeconfig, s.CloudsPath, s.Cluster)
}

// writeFiles writes clouds.yaml and the configuration. The configuration names no
// controlNodes: cookbook finds the control nodes by their node-role label.
func (s *Stack) writeFiles(password string, port int) error {
	clouds := fmt.Sprintf(`# clouds.yaml of the cookbook lab (its password is lab-only)
clouds:
  %s:
    auth:
      auth_url: %s
      username: novaadmin
      password: %s
      project_name: %s
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    identity_api_version: 3
`, s.Cluster, s.Cloud.AuthURL(), password, s.Cluster)
	if err := os.WriteFile(s.CloudsPath, []byte(clouds), 0o600); err != nil {
		return err
	}
	role := func(name, suffix, flavor, policy string, extra string) string {
		return fmt.Sprintf(`      %s:
        prefix: %s-%s
        flavor: %s
        image: debian-12.0-bookworm
        network: lan-flat-cloudinstances2b
        securityGroups: [toolsbeta-k8s-full-connectivity]
        serverGroup: {name: %s-%s, policy: %s}
        keyName: toolsbeta-cookbook
%s`, name, s.Prefix, suffix, flavor, s.Prefix, suffix, policy, extra)
	}
	provision := `        provision:
          - [apt-get, update]
          - [apt-get, install, -y, kubeadm, kubelet, containerd]
`
	cfg := fmt.Sprintf(`# cookbook configuration of the lab cluster %[1]s (written by cookbook-lab)
audit:
  file: %[2]s
clusters:
  %[1]s:
    openstack:
      cloud: %[1]s
      cloudsFile: %[3]s
    kubernetes:
      kubeconfig: %[4]s
    ssh:
      user: root
      port: %[5]d
      identityFiles: [%[6]s]
      knownHosts: [%[7]s]
      connectTo: address
`, s.Cluster, s.AuditPath, s.CloudsPath, s.CP.Kubeconfig, port, s.KeyPath, s.KnownHostsPath)
	if len(s.EtcdHosts) > 0 {
		cfg += fmt.Sprintf(`    etcd:
      external:
        hosts: [%s]
        cacert: %s
        cert: %s
        key: %s
`, strings.Join(s.EtcdHosts, ", "), EtcdCerts.CACert, EtcdCerts.Cert, EtcdCerts.Key)
	}
	cfg += "    roles:\n"
	cfg += role("control", "control", "g4.cores2.ram4.disk20", "anti-affinity", "        controlPlane: true\n"+provision)
	cfg += role("worker", "worker", "g4.cores4.ram8.disk20", "soft-anti-affinity", "        extraStorage: {device: /dev/sdb, mountPoint: /var/lib/containerd}\n"+provision+"        rebootAfterProvision: true\n")
	cfg += role("worker-nfs", "worker-nfs", "g4.cores4.ram8.disk20", "soft-anti-affinity", `        labels:
          toolforge.org/nfs-mounted: "true"
          kubernetes.wmcloud.org/nfs-mounted: "true"
`+provision+`          - [apt-get, install, -y, nfs-common]
        rebootAfterProvision: true
`)
	cfg += role("ingress", "ingress", "g4.cores2.ram4.disk20", "anti-affinity", `        labels:
          toolforge.org/ingress-worker: "true"
        taints:
          - {key: ingress, value: "true", effect: NoSchedule}
`+provision)
	return os.WriteFile(s.ConfigPath, []byte(cfg), 0o600)
}

// commandsHandler serves the VMs' command history as JSON (GET /_lab/commands).
func (s *Stack) commandsHandler(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s.Fleet.History())
}

// Down stops everything the lab started.
func (s *Stack) Down() error {
	var errs []error
	if s.Cloud != nil {
		errs = append(errs, s.Cloud.Close())
	}
	if s.Fleet != nil {
		s.Fleet.Close()
	}
	if s.CP != nil {
		errs = append(errs, s.CP.Stop())
	}
	return errors.Join(errs...)
}

func writeKey(path string) (string, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	block, err := ssh.MarshalPrivateKey(priv, "cookbook lab operator")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", err
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		return "", err
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " cookbook-lab"
	return line, os.WriteFile(path+".pub", []byte(line+"\n"), 0o644)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
