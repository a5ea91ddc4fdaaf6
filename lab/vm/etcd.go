package vm

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The lab's stacked etcd, as kubeadm sets it up: a member per control VM (the initial
// ones, and each that joins with --control-plane), removed by kubeadm reset on its VM
// when kubeadm can read this node's configuration from the cluster (its Node exists).
// A member is started and healthy while its VM runs and its local etcd does (kubeadm
// reset stops it for good: its static pod manifests are gone; a control-plane join
// starts it again). etcdctl on a control VM answers
// member list, endpoint health --cluster and member remove with etcdctl's own output, and
// etcd's reconfiguration checks (strict-reconfig-check, on by default) refuse what would
// leave too few started members.

// With Fleet.ExternalEtcd the lab's etcd is external instead, as the Toolforge one: its
// members are etcd VMs of their own (added with AddEtcdMember), whose etcdctl answers only
// with the configured certificate paths and the VM's own client URL (its server
// certificate is not valid for 127.0.0.1); a control VM has no local etcd (etcdctl there
// gets connection refused, kubeadm's etcd certificates are not there) and its kubeadm
// join --control-plane and kubeadm reset leave the membership alone.

// EtcdCerts are the paths of the CA, client certificate and key etcdctl must be given on
// the hosts of an external etcd.
type EtcdCerts struct{ CACert, Cert, Key string }

// path is the path of a flag (cacert, cert, key).
func (c *EtcdCerts) path(flag string) string {
	switch flag {
	case "cacert":
		return c.CACert
	case "cert":
		return c.Cert
	case "key":
		return c.Key
	}
	return ""
}

// EtcdMember is a member of the lab's etcd cluster.
type EtcdMember struct {
	ID   uint64
	Name string
	// Address is the member's VM address: its peer URL is https://Address:2380, its
	// client URL https://Address:2379.
	Address string
	// Stopped: the member's local etcd does not run (kubeadm reset on its VM removed the
	// static pod manifests without removing the member): it is not started, and
	// unhealthy in endpoint health, whether its VM runs or not.
	Stopped bool
}

func (m EtcdMember) peerURL() string   { return "https://" + m.Address + ":2380" }
func (m EtcdMember) clientURL() string { return "https://" + m.Address + ":2379" }

// etcdState is the fleet's etcd cluster and the uploaded certificates' key.
type etcdState struct {
	clusterID uint64
	term      uint64
	members   []EtcdMember
	// certKey is the key the last kubeadm upload-certs printed (for tests).
	certKey string
}

func randomID() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:]) | 1<<60 // 16 hex digits, as etcd's usually are
}

// AddEtcdMember makes the VM an etcd member (a control node of the lab's initial cluster),
// if it is not one.
func (f *Fleet) AddEtcdMember(v *VM) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addMemberLocked(v)
}

func (f *Fleet) addMemberLocked(v *VM) {
	if f.etcd.clusterID == 0 {
		f.etcd.clusterID, f.etcd.term = randomID(), 2
	}
	for _, m := range f.etcd.members {
		if m.Name == v.Name {
			return
		}
	}
	f.etcd.members = append(f.etcd.members, EtcdMember{ID: randomID(), Name: v.Name, Address: v.Address})
}

// EtcdMembers returns the members of the lab's etcd cluster.
func (f *Fleet) EtcdMembers() []EtcdMember {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]EtcdMember(nil), f.etcd.members...)
}

// memberUpLocked reports whether a member is started: its VM runs and its local etcd
// does (f.mu held).
func (f *Fleet) memberUpLocked(m EtcdMember) bool {
	if m.Stopped {
		return false
	}
	for _, v := range f.vms {
		if v.Name == m.Name {
			return v.running.Load()
		}
	}
	return false
}

// startedLocked counts the started members, leaving out the member of id except.
func (f *Fleet) startedLocked(except uint64) (members, started int) {
	for _, m := range f.etcd.members {
		if m.ID == except {
			continue
		}
		members++
		if f.memberUpLocked(m) {
			started++
		}
	}
	return members, started
}

// quorateLocked reports whether enough members run for etcd to commit anything.
func (f *Fleet) quorateLocked() bool {
	n, up := f.startedLocked(0)
	return n > 0 && up >= n/2+1
}

var errNotEnoughStarted = "etcdserver: re-configuration failed due to not enough started members"

// joinEtcd adds the VM as a member, as kubeadm join --control-plane does (etcd's
// member add refuses it when the cluster would not have a quorum of started members),
// and starts its local etcd. A member of its peer URL left by an earlier kubeadm reset
// is kept (kubeadm skips the member add) and started again.
func (f *Fleet) joinEtcd(v *VM) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, m := range f.etcd.members {
		if m.Name == v.Name {
			f.etcd.members[i].Stopped = false
			return nil
		}
	}
	n, up := f.startedLocked(0)
	if n > 0 && up < (n+1)/2+1 {
		return fmt.Errorf("etcdserver: unhealthy cluster")
	}
	f.addMemberLocked(v)
	return nil
}

// localEtcd reports whether the VM runs a local etcd (it is a member not stopped by
// kubeadm reset).
func (f *Fleet) localEtcd(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.etcd.members {
		if m.Name == name && !m.Stopped {
			return true
		}
	}
	return false
}

// leaveEtcd removes the VM's member, as kubeadm reset's remove-etcd-member phase does
// (RemoveStackedEtcdMemberFromCluster): the only member left is not removed (kubeadm
// skips it silently), nor one already gone.
func (f *Fleet) leaveEtcd(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.etcd.members {
		if m.Name == name {
			if len(f.etcd.members) == 1 {
				return nil
			}
			return f.removeMemberLocked(m.ID)
		}
	}
	return nil
}

// stopEtcd stops the VM's local etcd (kubeadm reset's cleanup removed its static pod):
// its member, if it is still one, is no longer started.
func (f *Fleet) stopEtcd(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, m := range f.etcd.members {
		if m.Name == name {
			f.etcd.members[i].Stopped = true
		}
	}
}

// removeMemberLocked is etcd's member remove with its strict reconfiguration check.
func (f *Fleet) removeMemberLocked(id uint64) error {
	if !f.quorateLocked() {
		return fmt.Errorf("context deadline exceeded")
	}
	i := -1
	for j, m := range f.etcd.members {
		if m.ID == id {
			i = j
		}
	}
	if i < 0 {
		return fmt.Errorf("etcdserver: member not found")
	}
	if n, up := f.startedLocked(id); up < n/2+1 {
		return fmt.Errorf("%s", errNotEnoughStarted)
	}
	f.etcd.members = append(f.etcd.members[:i:i], f.etcd.members[i+1:]...)
	f.etcd.term++
	return nil
}

// checkCertificateKey is kubeadm join --control-plane's certificate key validation and
// download-certs phase (against the kubeadm-certs Secret the real kubeadm uploaded). The
// key is never part of the error.
func (f *Fleet) checkCertificateKey(ctx context.Context, key string) error {
	if key == "" {
		return fmt.Errorf("error execution phase preflight: \nOne or more conditions for hosting a new control plane instance is not satisfied.\n\n" +
			"[failure loading certificate for CA: couldn't load the certificate file /etc/kubernetes/pki/ca.crt: open /etc/kubernetes/pki/ca.crt: no such file or directory]\n\n" +
			"Please ensure that:\n* The cluster has a stable controlPlaneEndpoint address.\n* The certificates that must be shared among control plane instances are provided.")
	}
	raw, err := hex.DecodeString(key)
	if err != nil {
		return fmt.Errorf("controlPlane.certificateKey: Invalid value: \"[hidden]\": certificate key decoding error: %v", err)
	}
	if len(raw) != 32 {
		return fmt.Errorf("controlPlane.certificateKey: Invalid value: \"[hidden]\": invalid certificate key size %d, the key must be an AES key of size 32", len(raw))
	}
	if err := f.Cluster.DownloadCerts(ctx, key); err != nil {
		return fmt.Errorf("error execution phase control-plane-prepare/download-certs: error downloading certs: %w", err)
	}
	return nil
}

// PowerOff stops the VM as a power cut does: its SSH server and kubelet stop and it does
// not come back (its etcd member, if any, is no longer started). The cloud still shows
// the server as it was.
func (f *Fleet) PowerOff(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return f.Stop(ctx, id)
}

// etcdctl flags kubeadm's etcd needs: TLS with a client certificate signed by its CA.
var etcdPKI = map[string]bool{
	"/etc/kubernetes/pki/etcd/healthcheck-client": true, "/etc/kubernetes/pki/etcd/server": true,
	"/etc/kubernetes/pki/etcd/peer": true, "/etc/kubernetes/pki/apiserver-etcd-client": true,
}

// etcdctl answers etcdctl (API v3) on a VM.
func (v *VM) etcdctl(args []string, stdout, stderr io.Writer) int {
	const exitError, exitBadArgs = 1, 128
	fail := func(code int, msg string) int {
		fmt.Fprintln(stderr, "Error:", msg)
		return code
	}
	var rest []string
	flags := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			rest = append(rest, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name == "w" {
			name = "write-out"
		}
		switch name {
		case "cluster", "hex":
			flags[name] = "true"
			if hasVal {
				flags[name] = val
			}
			continue
		case "endpoints", "cacert", "cert", "key", "write-out", "command-timeout", "dial-timeout":
		default:
			return fail(exitBadArgs, fmt.Sprintf("unknown flag: %s", a))
		}
		if !hasVal {
			if i+1 >= len(args) {
				return fail(exitBadArgs, fmt.Sprintf("flag needs an argument: %s", a))
			}
			i++
			val = args[i]
		}
		flags[name] = val
	}
	out := flags["write-out"]
	if out != "" && out != "json" && out != "simple" {
		return fail(exitBadArgs, fmt.Sprintf("unsupported output format %q in the lab (json, simple)", out))
	}
	ext := v.fleet.ExternalEtcd
	for _, f := range []string{"cacert", "cert", "key"} {
		p := flags[f]
		if p == "" {
			continue
		}
		ok := p == "/etc/kubernetes/pki/etcd/ca.crt" && f == "cacert" ||
			f == "cert" && etcdPKI[strings.TrimSuffix(p, ".crt")] && strings.HasSuffix(p, ".crt") ||
			f == "key" && etcdPKI[strings.TrimSuffix(p, ".key")] && strings.HasSuffix(p, ".key")
		if ext != nil {
			// No kubeadm etcd PKI with an external etcd; the configured certificates
			// are on its hosts and on the control VMs (the API server's).
			ok = p == ext.path(f)
		}
		if !ok {
			return fail(exitBadArgs, fmt.Sprintf("open %s: no such file or directory", p))
		}
	}
	fl := v.fleet
	fl.mu.Lock()
	local := false
	for _, m := range fl.etcd.members {
		local = local || m.Name == v.Name && !m.Stopped
	}
	fl.mu.Unlock()
	ep := flags["endpoints"]
	certs := flags["cacert"] != "" && flags["cert"] != "" && flags["key"] != ""
	if ext != nil && certs {
		switch {
		case !local && (ep == "" || ep == "https://127.0.0.1:2379" || ep == "https://"+v.Address+":2379"):
			// No etcd on this host.
			host := strings.TrimSuffix(strings.TrimPrefix(ep, "https://"), ":2379")
			if host == "" {
				host = "127.0.0.1"
			}
			fmt.Fprintf(stderr, "{\"level\":\"warn\",\"msg\":\"retrying of unary invoker failed\",\"target\":\"etcd-endpoints://%s\",\"error\":\"rpc error: code = DeadlineExceeded desc = latest balancer error: last connection error: connection error: desc = \\\"transport: Error while dialing: dial tcp %s:2379: connect: connection refused\\\"\"}\n", ep, host)
			return fail(exitError, "context deadline exceeded")
		case local && (ep == "" || ep == "https://127.0.0.1:2379"):
			// The member's server certificate names the host, not the loopback.
			fmt.Fprintf(stderr, "{\"level\":\"warn\",\"msg\":\"retrying of unary invoker failed\",\"target\":\"etcd-endpoints://%s\",\"error\":\"rpc error: code = DeadlineExceeded desc = latest balancer error: last connection error: connection error: desc = \\\"transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate is valid for %s, %s, not 127.0.0.1\\\"\"}\n", ep, v.Name, v.Address)
			return fail(exitError, "context deadline exceeded")
		}
	}
	// kubeadm's etcd serves TLS only, on 127.0.0.1 and the host's address, and wants a
	// client certificate: anything else never gets an answer.
	if !local || flags["cacert"] == "" || flags["cert"] == "" || flags["key"] == "" ||
		(ep != "https://127.0.0.1:2379" && ep != "https://"+v.Address+":2379") {
		fmt.Fprintf(stderr, "{\"level\":\"warn\",\"msg\":\"retrying of unary invoker failed\",\"target\":\"etcd-endpoints://%s\",\"error\":\"rpc error: code = DeadlineExceeded desc = context deadline exceeded\"}\n", ep)
		return fail(exitError, "context deadline exceeded")
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	quorate := fl.quorateLocked()
	var self uint64
	for _, m := range fl.etcd.members {
		if m.Name == v.Name {
			self = m.ID
		}
	}
	// --hex prints the IDs of JSON output as hex strings (etcdctl 3.6's member list and
	// remove printer; raft_term stays a number).
	hexIDs := flags["hex"] == "true"
	idOut := func(n uint64) any {
		if hexIDs {
			return fmt.Sprintf("%x", n)
		}
		return n
	}
	header := map[string]any{"cluster_id": idOut(fl.etcd.clusterID), "member_id": idOut(self), "raft_term": fl.etcd.term}
	type member struct {
		ID         any      `json:"ID,omitempty"`
		Name       string   `json:"name,omitempty"`
		PeerURLs   []string `json:"peerURLs,omitempty"`
		ClientURLs []string `json:"clientURLs,omitempty"`
	}
	members := func() []member {
		var ms []member
		for _, m := range fl.etcd.members {
			ms = append(ms, member{ID: idOut(m.ID), Name: m.Name, PeerURLs: []string{m.peerURL()}, ClientURLs: []string{m.clientURL()}})
		}
		return ms
	}
	printJSON := func(x any) {
		b, _ := json.Marshal(x)
		fmt.Fprintln(stdout, string(b))
	}
	switch strings.Join(rest, " ") {
	case "member list":
		if !quorate {
			return fail(exitError, "context deadline exceeded")
		}
		if out == "json" {
			printJSON(map[string]any{"header": header, "members": members()})
			return 0
		}
		for _, m := range fl.etcd.members {
			fmt.Fprintf(stdout, "%x, started, %s, %s, %s, false\n", m.ID, m.Name, m.peerURL(), m.clientURL())
		}
		return 0
	case "endpoint health":
		if flags["cluster"] == "" {
			return fail(exitBadArgs, "the lab answers endpoint health with --cluster only")
		}
		type health struct {
			Ep     string `json:"endpoint"`
			Health bool   `json:"health"`
			Took   string `json:"took"`
			Error  string `json:"error,omitempty"`
		}
		var hs []health
		bad := false
		for _, m := range fl.etcd.members {
			h := health{Ep: m.clientURL(), Health: true, Took: (time.Duration(900+len(m.Name)*37) * time.Microsecond).String()}
			if !quorate || !fl.memberUpLocked(m) {
				h = health{Ep: m.clientURL(), Took: "5.000869714s", Error: "context deadline exceeded"}
				bad = true
			}
			hs = append(hs, h)
		}
		sort.Slice(hs, func(i, j int) bool { return hs[i].Ep < hs[j].Ep })
		if out == "json" {
			printJSON(hs)
		} else {
			for _, h := range hs {
				if h.Health {
					fmt.Fprintf(stdout, "%s is healthy: successfully committed proposal: took = %s\n", h.Ep, h.Took)
				} else {
					fmt.Fprintf(stderr, "%s is unhealthy: failed to commit proposal: %s\n", h.Ep, h.Error)
				}
			}
		}
		if bad {
			return fail(exitError, "unhealthy cluster")
		}
		return 0
	}
	if len(rest) >= 2 && rest[0] == "member" && rest[1] == "remove" {
		if len(rest) != 3 {
			return fail(exitBadArgs, "member ID is not provided")
		}
		id, err := strconv.ParseUint(rest[2], 16, 64)
		if err != nil {
			return fail(exitBadArgs, fmt.Sprintf("bad member ID arg (%v), expecting ID in Hex", err))
		}
		if err := fl.removeMemberLocked(id); err != nil {
			return fail(exitError, err.Error())
		}
		if out == "json" {
			printJSON(map[string]any{"header": header, "members": members()})
		} else {
			fmt.Fprintf(stdout, "Member %16x removed from cluster %16x\n", id, fl.etcd.clusterID)
		}
		return 0
	}
	return fail(exitBadArgs, fmt.Sprintf("unknown command %q for \"etcdctl\" in the lab", strings.Join(rest, " ")))
}

// CertificateKey is the key of the last `kubeadm init phase upload-certs --upload-certs`
// ("" if none), for tests that look for it where it must not be.
func (f *Fleet) CertificateKey() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.etcd.certKey
}
