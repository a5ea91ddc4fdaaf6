// Package config loads and validates cookbook's YAML configuration: one entry per cluster,
// with its cloud, its kubeconfig, its SSH settings and its node roles.
package config

import (
	"bytes"
	"errors"
	"example.com/cookbook/filekind"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/yaml"
)

// Config is the whole configuration file.
type Config struct {
	// Audit says where audit lines ("Added a new k8s worker X to the cluster") go.
	Audit Audit `json:"audit,omitempty"`
	// Clusters maps a cluster name (the --cluster-name flag) to its settings.
	Clusters map[string]*Cluster `json:"clusters"`

	// Path is the file the configuration was loaded from.
	Path string `json:"-"`
}

// Audit is the audit sink: a command that receives each line on its standard input
// (as the existing cookbooks pipe lines to the server admin log), a file the line is
// appended to, or both.
type Audit struct {
	Command []string `json:"command,omitempty"`
	File    string   `json:"file,omitempty"`
}

// Cluster is one Kubernetes cluster and the OpenStack project it runs in.
type Cluster struct {
	OpenStack  OpenStack  `json:"openstack"`
	Kubernetes Kubernetes `json:"kubernetes"`
	// ControlNodes are the hostnames of the control-plane nodes (used to get join commands).
	ControlNodes []string `json:"controlNodes"`
	// Domain is the DNS domain of the nodes; a node's FQDN is <hostname>.<domain>.
	Domain string           `json:"domain"`
	SSH    SSH              `json:"ssh"`
	Roles  map[string]*Role `json:"roles"`
	// Alertmanager, when set, is where the run silences the alerts of the nodes it takes
	// down on purpose.
	Alertmanager *Alertmanager `json:"alertmanager,omitempty"`
	// Prometheus, when set, is asked by reboot-stuck-workers which nodes are stuck.
	Prometheus *Prometheus `json:"prometheus,omitempty"`
	// Hooks run at named points of every node's life; a role's own hooks run after them.
	Hooks Hooks `json:"hooks,omitempty"`
	// Lock says how a run that writes holds the cluster (see LockKind).
	Lock Lock `json:"lock,omitempty"`
	// Records says how many run records the cluster keeps (lease clusters only).
	Records Records `json:"records,omitempty"`
	// Drain are the cluster's defaults for the drain flags of every cookbook that drains.
	Drain Drain `json:"drain,omitempty"`
	// Etcd says where the cluster's etcd runs: stacked on the control nodes (the
	// default) or external.
	Etcd Etcd `json:"etcd,omitempty"`

	// Name is the cluster's key in Config.Clusters.
	Name string `json:"-"`
	// hasKubernetes is set when the file has a kubernetes section for the cluster.
	hasKubernetes bool
}

// Lock kinds.
const (
	// LockLease holds a coordination.k8s.io/v1 Lease in the cluster and copies the run
	// records there: runs from every operator host exclude each other.
	LockLease = "lease"
	// LockFile holds a flock on the operator host; run records stay on that host.
	LockFile = "file"
)

// Lock configures the cluster's lock.
type Lock struct {
	// Kind is lease or file; empty is lease for a cluster with a kubernetes section,
	// file for one without (it has no API to hold a Lease in).
	Kind string `json:"kind,omitempty"`
	// Name and Namespace name the Lease; default cookbook-lock in kube-system. Run
	// records are ConfigMaps in the same namespace.
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	// Duration is how long a Lease not renewed stays held: after it, another run
	// takes it over. Default 60s.
	Duration string `json:"duration,omitempty"`
	// RenewEvery is how often the holder renews the Lease. Default 5s.
	RenewEvery string `json:"renewEvery,omitempty"`
}

// Drain are a cluster's drain defaults: a flag given on the command line wins over them,
// and they win over the flags' own defaults.
type Drain struct {
	// Force evicts bare pods (--force).
	Force *bool `json:"force,omitempty"`
	// DeleteEmptyDirData evicts pods with emptyDir volumes (--delete-emptydir-data).
	DeleteEmptyDirData *bool `json:"deleteEmptyDirData,omitempty"`
	// GracePeriod is the seconds pods get to terminate, -1 for each pod's own
	// (--grace-period).
	GracePeriod *int `json:"gracePeriod,omitempty"`
	// Timeout bounds a node's drain (--drain-timeout).
	Timeout *Duration `json:"timeout,omitempty"`
	// SkipWaitForDeleteTimeout is how long after their deletion time the pods of a node
	// that is not Ready are no longer waited for, 0 to wait for every pod
	// (--skip-wait-for-delete-timeout).
	SkipWaitForDeleteTimeout *Duration `json:"skipWaitForDeleteTimeout,omitempty"`
}

func (d *Drain) validate(p string) []error {
	var errs []error
	if d.GracePeriod != nil && *d.GracePeriod < -1 {
		errs = append(errs, fmt.Errorf("%s.gracePeriod: %d is negative (expected seconds, 0 or more, or -1 for each pod's own)", p, *d.GracePeriod))
	}
	if d.Timeout != nil && *d.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("%s.timeout: %s is not a positive duration (expected one such as 10m)", p, d.Timeout.D()))
	}
	if d.SkipWaitForDeleteTimeout != nil && *d.SkipWaitForDeleteTimeout < 0 {
		errs = append(errs, fmt.Errorf("%s.skipWaitForDeleteTimeout: %s is negative (expected 0 or a duration such as 5m)", p, d.SkipWaitForDeleteTimeout.D()))
	}
	return errs
}

// Records configures the copies of run records kept in the cluster.
type Records struct {
	// Keep is how many finished runs the cluster keeps (the newest); default 100.
	// Unfinished runs are never pruned.
	Keep *int `json:"keep,omitempty"`
}

// Lock defaults.
const (
	DefaultLockName       = "cookbook-lock"
	DefaultLockNamespace  = "kube-system"
	DefaultLockDuration   = 60 * time.Second
	DefaultLockRenewEvery = 5 * time.Second
	DefaultRecordsKeep    = 100
)

// LockKind returns the cluster's lock kind, LockLease or LockFile: the configured one,
// else lease when the cluster has a kubernetes section and file when it has none.
func (cl *Cluster) LockKind() string {
	if cl.Lock.Kind != "" {
		return cl.Lock.Kind
	}
	if cl.hasKubernetes {
		return LockLease
	}
	return LockFile
}

// LockName returns the Lease's name and namespace, with the defaults filled in.
func (cl *Cluster) LockName() (namespace, name string) {
	namespace, name = cl.Lock.Namespace, cl.Lock.Name
	if namespace == "" {
		namespace = DefaultLockNamespace
	}
	if name == "" {
		name = DefaultLockName
	}
	return namespace, name
}

// LockTimes returns the Lease's duration and renewal period, with the defaults filled
// in (the values were checked when the file was loaded).
func (cl *Cluster) LockTimes() (duration, renewEvery time.Duration) {
	duration, renewEvery = DefaultLockDuration, DefaultLockRenewEvery
	if d, err := time.ParseDuration(cl.Lock.Duration); err == nil {
		duration = d
	}
	if d, err := time.ParseDuration(cl.Lock.RenewEvery); err == nil {
		renewEvery = d
	}
	return duration, renewEvery
}

// RecordsKeep returns how many finished run records the cluster keeps.
func (cl *Cluster) RecordsKeep() int {
	if cl.Records.Keep != nil {
		return *cl.Records.Keep
	}
	return DefaultRecordsKeep
}

// OpenStack names the cloud (an entry of clouds.yaml) and the project the cluster lives in.
type OpenStack struct {
	Cloud   string `json:"cloud"`
	Project string `json:"project,omitempty"`
	// CloudsFile is an explicit clouds.yaml; empty means the usual search path.
	CloudsFile string `json:"cloudsFile,omitempty"`
}

// Kubernetes says how to reach the cluster's API server.
type Kubernetes struct {
	// Kubeconfig is a path; empty means client-go's loading rules ($KUBECONFIG, ~/.kube/config).
	Kubeconfig string `json:"kubeconfig,omitempty"`
	Context    string `json:"context,omitempty"`
}

// SSH holds how cookbook logs into the nodes.
type SSH struct {
	User string `json:"user"`
	Port int    `json:"port,omitempty"`
	// Sudo runs commands that need root through sudo.
	Sudo bool `json:"sudo,omitempty"`
	// JumpHost is a bastion, as [user@]host[:port], used like ssh's ProxyJump.
	JumpHost string `json:"jumpHost,omitempty"`
	// KnownHosts are known_hosts files; empty means ~/.ssh/known_hosts.
	KnownHosts []string `json:"knownHosts,omitempty"`
	// IdentityFiles are private key files used besides the ssh-agent.
	IdentityFiles []string `json:"identityFiles,omitempty"`
	// InsecureIgnoreHostKey turns host key verification off. Never the default; it is
	// logged loudly on every connection.
	InsecureIgnoreHostKey bool `json:"insecureIgnoreHostKey,omitempty"`
	// ConnectTo is what cookbook connects to: "fqdn" (hostname.domain, the default) or
	// "address" (the server's address as OpenStack reports it).
	ConnectTo string `json:"connectTo,omitempty"`
}

// Role is a kind of node (worker, worker-nfs, control, ingress, ...).
type Role struct {
	// Prefix names the role's servers: <prefix>-<number>, e.g. toolsbeta-test-k8s-worker-7.
	Prefix string `json:"prefix"`
	// Aliases are other names --role accepts for the role (worker_nfs for worker-nfs, as
	// the Toolforge cookbooks spell it).
	Aliases        []string `json:"aliases,omitempty"`
	Flavor         string   `json:"flavor,omitempty"`
	Image          string   `json:"image,omitempty"`
	Network        string   `json:"network,omitempty"`
	SecurityGroups []string `json:"securityGroups,omitempty"`
	// DefaultSecurityGroup, when false, keeps new servers out of the project's
	// "default" security group; they are in it besides SecurityGroups if unset or true.
	DefaultSecurityGroup *bool       `json:"defaultSecurityGroup,omitempty"`
	ServerGroup          ServerGroup `json:"serverGroup,omitempty"`
	// KeyName is the Nova key pair injected into new servers.
	KeyName string            `json:"keyName,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	Taints  []Taint           `json:"taints,omitempty"`
	// ControlPlane marks control-plane roles: they join with the control-plane flags.
	ControlPlane bool `json:"controlPlane,omitempty"`
	// ExtraStorage, when set, is a volume prepared before provisioning.
	ExtraStorage *ExtraStorage `json:"extraStorage,omitempty"`
	// Provision are commands (argv lists) run on a new node after its first boot, in order.
	Provision [][]string `json:"provision,omitempty"`
	// RebootAfterProvision reboots a new node after provisioning, before it joins.
	RebootAfterProvision bool `json:"rebootAfterProvision,omitempty"`
	// Hooks run at named points of the life of the role's nodes, after the cluster's.
	Hooks Hooks `json:"hooks,omitempty"`
}

// InDefaultSecurityGroup reports whether new servers of the role are put in the
// project's "default" security group (unless defaultSecurityGroup: false).
func (r *Role) InDefaultSecurityGroup() bool {
	return r.DefaultSecurityGroup == nil || *r.DefaultSecurityGroup
}

// ServerGroup is the Nova server group a role's servers are placed in.
type ServerGroup struct {
	Name string `json:"name,omitempty"`
	// Policy is one of affinity, anti-affinity, soft-affinity, soft-anti-affinity.
	Policy string `json:"policy,omitempty"`
}

// ExtraStorage is an extra volume mounted on a role's nodes.
type ExtraStorage struct {
	Device     string `json:"device"`
	MountPoint string `json:"mountPoint"`
	// FsType is the filesystem, ext4 (the default) or xfs.
	FsType string `json:"fsType,omitempty"`
	// Reformat formats a device that has a filesystem of another type; without it that
	// is an error naming what is on the device.
	Reformat bool `json:"reformat,omitempty"`
}

// Type is the filesystem type, ext4 if FsType is empty.
func (e *ExtraStorage) Type() string {
	if e.FsType == "" {
		return "ext4"
	}
	return e.FsType
}

// Taint is a Kubernetes node taint.
type Taint struct {
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`
	Effect string `json:"effect"`
}

// DefaultPath returns the configuration file to use when --config is not given:
// $COOKBOOK_CONFIG, else ~/.config/cookbook/config.yaml if it exists, else
// /etc/cookbook/config.yaml.
func DefaultPath() string {
	if p := os.Getenv("COOKBOOK_CONFIG"); p != "" {
		return p
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, ".config", "cookbook", "config.yaml")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "/etc/cookbook/config.yaml"
}

// MaxSize is the largest configuration file Load and Parse accept.
const MaxSize = 1 << 20

// Load reads, strictly parses and validates the file at path. Unknown keys are errors.
// Only a regular file (or a symbolic link to one) of at most MaxSize bytes is read: a
// named pipe, a device, a socket or a directory is refused before it is opened, so
// that loading never blocks.
func Load(path string) (*Config, error) {
	data, err := readRegular(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

func readRegular(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	if err := checkFile(path, fi); err != nil {
		return nil, err
	}
	// O_NONBLOCK: should the file have been replaced by a named pipe since the Stat,
	// the open does not wait for a writer; the Stat of the open file then refuses it.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	if err := checkFile(path, fi); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("config %s: is larger than %s (it grew while being read)", path, sizeText(MaxSize))
	}
	return data, nil
}

// checkFile refuses what is not a regular file of at most MaxSize bytes.
func checkFile(path string, fi os.FileInfo) error {
	if fi.Mode().IsRegular() {
		if fi.Size() > MaxSize {
			return tooLarge(path, fi.Size())
		}
		return nil
	}
	what := filekind.Of(fi.Mode())
	return fmt.Errorf("config %s: is %s, expected a regular file", path, what)
}

func tooLarge(path string, size int64) error {
	return fmt.Errorf("config %s: is %s (%d bytes), larger than the %s limit", path, sizeText(size), size, sizeText(MaxSize))
}

// sizeText writes a size in KiB, MiB or GiB with one decimal (none when it is 0).
func sizeText(n int64) string {
	unit := func(u int64, name string) string {
		return strings.TrimSuffix(strconv.FormatFloat(float64(n)/float64(u), 'f', 1, 64), ".0") + " " + name
	}
	switch {
	case n >= 1<<30:
		return unit(1<<30, "GiB")
	case n >= 1<<20:
		return unit(1<<20, "MiB")
	case n >= 1<<10:
		return unit(1<<10, "KiB")
	}
	return strconv.FormatInt(n, 10) + " bytes"
}

// Parse parses and validates configuration data; path is used in error messages. Errors
// are one line naming the YAML path of the problem: an unknown key (with the nearest
// known one), a value of the wrong type, a duplicate key (with both lines), a YAML
// syntax error (with its line), or what the validation found.
func Parse(path string, data []byte) (*Config, error) {
	if len(data) > MaxSize {
		return nil, tooLarge(path, int64(len(data)))
	}
	var c Config
	if msg := checkYAML(data, &c); msg != "" {
		return nil, fmt.Errorf("config %s: %s", path, msg)
	}
	if err := yaml.UnmarshalStrict(bytes.TrimSpace(data), &c); err != nil {
		// checkYAML should have found it; still one line.
		return nil, fmt.Errorf("config %s: %s", path, oneLine(err.Error()))
	}
	c.Path = path
	// Which clusters have a kubernetes section (the lock's default depends on it).
	var sections struct {
		Clusters map[string]map[string]any `json:"clusters"`
	}
	_ = yaml.Unmarshal(bytes.TrimSpace(data), &sections)
	var errs []error
	for name, cl := range c.Clusters {
		if cl == nil {
			errs = append(errs, fmt.Errorf("%s: empty", join("clusters", name)))
			continue
		}
		cl.Name = name
		_, cl.hasKubernetes = sections.Clusters[name]["kubernetes"]
		errs = append(errs, cl.validate(join("clusters", name))...)
	}
	if len(c.Clusters) == 0 {
		errs = append(errs, errors.New("clusters: at least one cluster is required"))
	}
	if len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = e.Error()
		}
		sort.Strings(msgs)
		if n := len(msgs) - maxErrors; n > 0 {
			msgs = append(msgs[:maxErrors], fmt.Sprintf("and %d more", n))
		}
		return nil, fmt.Errorf("config %s: %s", path, strings.Join(msgs, "; "))
	}
	return &c, nil
}

// Cluster returns the named cluster or an error listing the known ones.
func (c *Config) Cluster(name string) (*Cluster, error) {
	if cl, ok := c.Clusters[name]; ok {
		return cl, nil
	}
	return nil, fmt.Errorf("cluster %s is not in %s (known: %s)", quote(name), c.Path, strings.Join(sortedKeys(c.Clusters), ", "))
}

// Role returns the named role or an error listing the known ones.
func (cl *Cluster) Role(name string) (*Role, error) {
	_, r, err := cl.RoleNamed(name)
	return r, err
}

// aliasRE is what a role alias may be: a role name, or one spelled with underscores.
var aliasRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$`)

// RoleNamed returns the role a name or one of its aliases names, with the role's own
// name, or an error listing the known names.
func (cl *Cluster) RoleNamed(name string) (string, *Role, error) {
	if r, ok := cl.Roles[name]; ok {
		return name, r, nil
	}
	var known []string
	for _, n := range sortedKeys(cl.Roles) {
		r := cl.Roles[n]
		if r != nil && slices.Contains(r.Aliases, name) {
			return n, r, nil
		}
		k := n
		if r != nil && len(r.Aliases) > 0 {
			k += " (" + strings.Join(r.Aliases, ", ") + ")"
		}
		known = append(known, k)
	}
	return "", nil, fmt.Errorf("role %s is not defined for cluster %s (known: %s)", quote(name), cl.Name, strings.Join(known, ", "))
}

// RoleOf returns the role whose prefix the hostname carries (<prefix>-<number>).
func (cl *Cluster) RoleOf(hostname string) (string, *Role, bool) {
	for _, name := range sortedKeys(cl.Roles) {
		r := cl.Roles[name]
		if rest, ok := strings.CutPrefix(hostname, r.Prefix+"-"); ok && isDigits(rest) {
			return name, r, true
		}
	}
	return "", nil, false
}

// FQDN returns hostname.domain (or hostname when no domain is set).
func (cl *Cluster) FQDN(hostname string) string {
	if cl.Domain == "" {
		return hostname
	}
	return hostname + "." + cl.Domain
}

func (cl *Cluster) validate(p string) []error {
	var errs []error
	req := func(key, v string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s.%s: required", p, key))
		}
	}
	if err := CheckName(cl.Name); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", p, err))
	}
	req("openstack.cloud", cl.OpenStack.Cloud)
	req("ssh.user", cl.SSH.User)
	if cl.SSH.Port < 0 || cl.SSH.Port > 65535 {
		errs = append(errs, fmt.Errorf("%s.ssh.port: %d is not a port number", p, cl.SSH.Port))
	}
	switch cl.SSH.ConnectTo {
	case "", "fqdn", "address":
	default:
		errs = append(errs, fmt.Errorf("%s.ssh.connectTo: %s is not one of fqdn, address", p, quote(cl.SSH.ConnectTo)))
	}
	if cl.Domain != "" {
		if err := CheckDomain(cl.Domain); err != nil {
			errs = append(errs, fmt.Errorf("%s.domain: %w", p, err))
		}
	}
	for i, h := range cl.ControlNodes {
		if err := CheckHostname(h); err != nil {
			errs = append(errs, fmt.Errorf("%s.controlNodes[%d]: %w", p, i, err))
		}
	}
	if len(cl.Roles) == 0 {
		errs = append(errs, fmt.Errorf("%s.roles: at least one role is required", p))
	}
	errs = append(errs, cl.validateLock(p)...)
	errs = append(errs, cl.Drain.validate(p+".drain")...)
	errs = append(errs, cl.Etcd.validate(p+".etcd")...)
	for name, r := range cl.Roles {
		rp := join(p+".roles", name)
		if r == nil {
			errs = append(errs, fmt.Errorf("%s: empty", rp))
			continue
		}
		if err := CheckName(name); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", rp, err))
		}
		if r.Prefix == "" {
			errs = append(errs, fmt.Errorf("%s.prefix: required", rp))
		} else if err := CheckHostname(r.Prefix); err != nil {
			errs = append(errs, fmt.Errorf("%s.prefix: %w", rp, err))
		}
		switch r.ServerGroup.Policy {
		case "", "affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity":
		default:
			errs = append(errs, fmt.Errorf("%s.serverGroup.policy: %s is not one of affinity, anti-affinity, soft-affinity, soft-anti-affinity", rp, quote(r.ServerGroup.Policy)))
		}
		for i, t := range r.Taints {
			switch t.Effect {
			case "NoSchedule", "PreferNoSchedule", "NoExecute":
			default:
				errs = append(errs, fmt.Errorf("%s.taints[%d].effect: %s is not one of NoSchedule, PreferNoSchedule, NoExecute", rp, i, quote(t.Effect)))
			}
			if t.Key == "" {
				errs = append(errs, fmt.Errorf("%s.taints[%d].key: required", rp, i))
			}
		}
		for i, argv := range r.Provision {
			if len(argv) == 0 || argv[0] == "" {
				errs = append(errs, fmt.Errorf("%s.provision[%d]: empty command", rp, i))
			}
		}
		if r.ExtraStorage != nil && (r.ExtraStorage.Device == "" || r.ExtraStorage.MountPoint == "") {
			errs = append(errs, fmt.Errorf("%s.extraStorage: device and mountPoint are required", rp))
		}
		if r.ExtraStorage != nil && r.ExtraStorage.Type() != "ext4" && r.ExtraStorage.Type() != "xfs" {
			errs = append(errs, fmt.Errorf("%s.extraStorage.fsType: %s is not one of ext4, xfs", rp, quote(r.ExtraStorage.FsType)))
		}
		errs = append(errs, r.Hooks.validate(rp+".hooks")...)
	}
	errs = append(errs, cl.Hooks.validate(p+".hooks")...)
	if cl.Alertmanager != nil {
		errs = append(errs, cl.Alertmanager.validate(p+".alertmanager")...)
	}
	if cl.Prometheus != nil {
		errs = append(errs, cl.Prometheus.validate(p+".prometheus")...)
	}
	// A name that is a role's name or alias names that role only.
	names := map[string]string{}
	for _, name := range sortedKeys(cl.Roles) {
		names[name] = name
	}
	for _, name := range sortedKeys(cl.Roles) {
		r := cl.Roles[name]
		if r == nil {
			continue
		}
		for i, a := range r.Aliases {
			ap := fmt.Sprintf("%s.aliases[%d]", join(p+".roles", name), i)
			if !aliasRE.MatchString(a) {
				errs = append(errs, fmt.Errorf("%s: %s is not a role name (expected lowercase letters, digits, - and _)", ap, quote(a)))
			} else if other, ok := names[a]; ok {
				errs = append(errs, fmt.Errorf("%s: %s already names role %s", ap, quote(a), other))
			}
			names[a] = name
		}
	}
	// Two roles sharing a prefix would make "the next worker" ambiguous.
	seen := map[string]string{}
	for _, name := range sortedKeys(cl.Roles) {
		if r := cl.Roles[name]; r != nil && r.Prefix != "" {
			if other, ok := seen[r.Prefix]; ok {
				errs = append(errs, fmt.Errorf("%s.prefix: %s is also the prefix of role %s", join(p+".roles", name), quote(r.Prefix), other))
			}
			seen[r.Prefix] = name
		}
	}
	return errs
}

func (cl *Cluster) validateLock(p string) []error {
	var errs []error
	switch cl.Lock.Kind {
	case "", LockLease, LockFile:
	default:
		errs = append(errs, fmt.Errorf("%s.lock.kind: %s is not one of lease, file", p, quote(cl.Lock.Kind)))
	}
	if cl.Lock.Name != "" {
		if err := CheckDomain(cl.Lock.Name); err != nil {
			errs = append(errs, fmt.Errorf("%s.lock.name: %s is not a valid object name", p, quote(cl.Lock.Name)))
		}
	}
	if cl.Lock.Namespace != "" {
		if err := CheckName(cl.Lock.Namespace); err != nil {
			errs = append(errs, fmt.Errorf("%s.lock.namespace: %w", p, err))
		}
	}
	for _, d := range []struct{ key, v, min string }{{"duration", cl.Lock.Duration, "1s"}, {"renewEvery", cl.Lock.RenewEvery, "100ms"}} {
		if d.v == "" {
			continue
		}
		v, err := time.ParseDuration(d.v)
		min, _ := time.ParseDuration(d.min)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s.lock.%s: %s is not a duration (expected one such as 60s)", p, d.key, quote(d.v)))
		case v < min:
			errs = append(errs, fmt.Errorf("%s.lock.%s: %s is shorter than %s", p, d.key, quote(d.v), d.min))
		case d.key == "duration" && v%time.Second != 0:
			errs = append(errs, fmt.Errorf("%s.lock.duration: %s is not a whole number of seconds", p, quote(d.v)))
		}
	}
	if len(errs) == 0 {
		duration, renew := cl.LockTimes()
		if renew*2 > duration {
			errs = append(errs, fmt.Errorf("%s.lock.renewEvery: %s is more than half of lock.duration %s (the lease would expire between renewals)", p, renew, duration))
		}
	}
	if k := cl.Records.Keep; k != nil && *k < 1 {
		errs = append(errs, fmt.Errorf("%s.records.keep: %d is not a positive number", p, *k))
	}
	return errs
}

var (
	labelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
)

// CheckHostname reports whether s is a valid RFC 1123 label (what a node's short hostname
// must be): lowercase letters, digits and '-', at most 63 characters, starting and ending
// with a letter or digit.
func CheckHostname(s string) error {
	if !labelRE.MatchString(s) {
		return fmt.Errorf("%s is not a valid hostname (RFC 1123 label: a-z, 0-9 and '-', at most 63 characters, no leading or trailing '-')", quote(s))
	}
	return nil
}

// CheckName validates a cluster or role name: the same rules as a hostname.
func CheckName(s string) error {
	if !labelRE.MatchString(s) {
		return fmt.Errorf("%s is not a valid name (lowercase letters, digits and '-', at most 63 characters)", quote(s))
	}
	return nil
}

// CheckDomain validates a DNS domain: dot-separated RFC 1123 labels.
func CheckDomain(s string) error {
	if len(s) > 253 {
		return fmt.Errorf("%s is not a valid domain (longer than 253 characters)", quote(s))
	}
	for _, l := range strings.Split(s, ".") {
		if !labelRE.MatchString(l) {
			return fmt.Errorf("%s is not a valid domain (label %s is not RFC 1123)", quote(s), quote(l))
		}
	}
	return nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
