package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/lab"
)

const etcdctlTLS = "etcdctl --endpoints https://127.0.0.1:2379 --cacert /etc/kubernetes/pki/etcd/ca.crt --cert /etc/kubernetes/pki/etcd/healthcheck-client.crt --key /etc/kubernetes/pki/etcd/healthcheck-client.key "

// memberList is etcdctl member list -w json as a client reads it.
type memberList struct {
	Header struct {
		ClusterID uint64 `json:"cluster_id"`
		MemberID  uint64 `json:"member_id"`
	} `json:"header"`
	Members []struct {
		ID         uint64   `json:"ID"`
		Name       string   `json:"name"`
		PeerURLs   []string `json:"peerURLs"`
		ClientURLs []string `json:"clientURLs"`
	} `json:"members"`
}

// listMembers is `etcdctl member list -w json` on cl (kubeadm's certificates), read.
func listMembers(t *testing.T, cl *ssh.Client) memberList {
	t.Helper()
	out, errs, code := run(t, cl, etcdctlTLS+"member list -w json")
	if code != 0 {
		t.Fatalf("member list: exit %d: %s", code, errs)
	}
	var l memberList
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("member list output %q: %v", out, err)
	}
	return l
}

func (l memberList) names() []string {
	var out []string
	for _, m := range l.Members {
		out = append(out, m.Name)
	}
	sort.Strings(out)
	return out
}

func (l memberList) id(name string) string {
	for _, m := range l.Members {
		if m.Name == name {
			return fmt.Sprintf("%x", m.ID)
		}
	}
	return ""
}

// TestEtcdMembership: the control VMs' etcd members, etcdctl's JSON, the certificate key
// a control-plane join needs, kubeadm reset leaving the cluster, a powered-off member
// unhealthy, and etcd's refusal to remove a member when too few would be started.
func TestEtcdMembership(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	op := newOperator(t)
	f := newFleet(t, op)
	f.Cluster = &KubeCluster{CP: cp}
	var cs []*VM
	for i := 1; i <= 3; i++ {
		v := boot(t, f, fmt.Sprintf("tb-etcd-control-%d", i), map[string]string{"cookbook-role": "control"})
		f.AddEtcdMember(v)
		cs = append(cs, v)
	}
	c4 := boot(t, f, "tb-etcd-control-4", nil)
	t.Cleanup(func() { _ = cp.RemoveNode(context.Background(), c4.Name) })
	c1 := redial(t, f, cs[0], op)

	list := func() memberList { t.Helper(); return listMembers(t, c1) }
	l := list()
	if got := l.names(); strings.Join(got, ",") != "tb-etcd-control-1,tb-etcd-control-2,tb-etcd-control-3" || l.Header.ClusterID == 0 || l.Header.MemberID == 0 {
		t.Fatalf("members %v, header %+v", got, l.Header)
	}
	if m := l.Members[0]; len(m.PeerURLs) != 1 || !strings.HasSuffix(m.PeerURLs[0], ":2380") || len(m.ClientURLs) != 1 || !strings.HasPrefix(m.ClientURLs[0], "https://") {
		t.Errorf("member URLs %+v", m)
	}
	// --hex: the IDs as hex strings (raft_term a number), as etcdctl 3.6 prints them.
	out, errs, code := run(t, c1, etcdctlTLS+"member list -w json --hex")
	var hexList struct {
		Header struct {
			ClusterID string `json:"cluster_id"`
			MemberID  string `json:"member_id"`
			RaftTerm  uint64 `json:"raft_term"`
		} `json:"header"`
		Members []struct {
			ID   string `json:"ID"`
			Name string `json:"name"`
		} `json:"members"`
	}
	if err := json.Unmarshal([]byte(out), &hexList); code != 0 || err != nil || len(hexList.Members) != 3 ||
		hexList.Header.ClusterID != fmt.Sprintf("%x", l.Header.ClusterID) || hexList.Header.MemberID != fmt.Sprintf("%x", l.Header.MemberID) || hexList.Header.RaftTerm == 0 {
		t.Fatalf("member list -w json --hex: exit %d, %q, %v, %s", code, out, err, errs)
	}
	for _, m := range hexList.Members {
		if m.ID != l.id(m.Name) {
			t.Errorf("member list --hex: %s has ID %q, want %q", m.Name, m.ID, l.id(m.Name))
		}
	}
	// Without kubeadm's etcd client certificate etcdctl gets no answer.
	if _, errs, code := run(t, c1, "etcdctl member list -w json"); code != 1 || !strings.Contains(errs, "Error: context deadline exceeded") {
		t.Errorf("etcdctl without TLS: exit %d, %s", code, errs)
	}
	if _, errs, code := run(t, redial(t, f, c4, op), etcdctlTLS+"member list"); code != 1 || !strings.Contains(errs, "context deadline exceeded") {
		t.Errorf("etcdctl on a VM without etcd: exit %d, %s", code, errs)
	}
	out, errs, code = run(t, c1, etcdctlTLS+"endpoint health --cluster -w json")
	var hs []struct {
		Endpoint string `json:"endpoint"`
		Health   bool   `json:"health"`
		Took     string `json:"took"`
		Error    string `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &hs); code != 0 || err != nil || len(hs) != 3 || !hs[0].Health || hs[0].Took == "" {
		t.Fatalf("endpoint health: exit %d, %q, %v, %s", code, out, err, errs)
	}

	// A control-plane join needs the certificate key of the last upload by the real
	// kubeadm, while the token owning the kubeadm-certs Secret lives (two hours).
	if _, errs, code := run(t, redial(t, f, c4, op), "kubeadm init phase upload-certs --upload-certs"); code != 1 || !strings.Contains(errs, "admin.conf") {
		t.Errorf("upload-certs on a VM that is not a control node: exit %d, %s", code, errs)
	}
	upload := func() string {
		t.Helper()
		out, errs, code := run(t, c1, "sudo kubeadm init phase upload-certs --upload-certs")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		key := lines[len(lines)-1]
		if code != 0 || !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(key) || !strings.HasPrefix(out, `[upload-certs] Storing the certificates in Secret "kubeadm-certs" in the "kube-system" Namespace`) {
			t.Fatalf("upload-certs: exit %d, %q, %s", code, out, errs)
		}
		if key != f.CertificateKey() {
			t.Fatalf("the fleet remembers key %q, upload-certs printed %q", f.CertificateKey(), key)
		}
		return key
	}
	key := upload()
	// The Secret is kubeadm's: every shared certificate and key sealed, owned by a
	// bootstrap token of two hours kubeadm created for it.
	owner := func() *corev1.Secret {
		t.Helper()
		sec, err := cp.Client.CoreV1().Secrets("kube-system").Get(ctx, "kubeadm-certs", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("no kubeadm-certs Secret after upload-certs: %v", err)
		}
		var names []string
		for n, v := range sec.Data {
			if len(v) > 0 {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		if got := strings.Join(names, ","); got != "ca.crt,ca.key,etcd-ca.crt,etcd-ca.key,front-proxy-ca.crt,front-proxy-ca.key,sa.key,sa.pub" {
			t.Errorf("kubeadm-certs entries: %s", got)
		}
		if len(sec.OwnerReferences) != 1 || sec.OwnerReferences[0].Kind != "Secret" {
			t.Fatalf("kubeadm-certs owners: %+v", sec.OwnerReferences)
		}
		tok, err := cp.Client.CoreV1().Secrets("kube-system").Get(ctx, sec.OwnerReferences[0].Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("the owner of kubeadm-certs: %v", err)
		}
		exp, err := time.Parse(time.RFC3339, string(tok.Data["expiration"]))
		if err != nil || time.Until(exp) < 119*time.Minute || time.Until(exp) > 2*time.Hour || string(tok.Data["description"]) != "Proxy for managing TTL for the kubeadm-certs secret" {
			t.Errorf("the owner of kubeadm-certs expires %s (%v), description %q", tok.Data["expiration"], err, tok.Data["description"])
		}
		return tok
	}
	tok := owner()
	join, errs, code := run(t, c1, "kubeadm token create --print-join-command")
	if code != 0 {
		t.Fatalf("token create: %s", errs)
	}
	join = strings.TrimSpace(join)
	joinWith := func(extra string) (string, int) {
		t.Helper()
		_, errs, code := run(t, redial(t, f, c4, op), join+" --control-plane"+extra)
		return errs, code
	}
	for _, c := range []struct{ name, extra, want string }{
		{"no key", "", "certificates that must be shared among control plane instances are provided"},
		{"malformed key", " --certificate-key abc", "certificate key decoding error"},
		{"short key", " --certificate-key abcd", "invalid certificate key size 2, the key must be an AES key of size 32"},
		{"wrong key", " --certificate-key " + strings.Repeat("0", 64), "error decoding secret data with provided key: cipher: message authentication failed"},
	} {
		if errs, code := joinWith(c.extra); code != 1 || !strings.Contains(errs, c.want) || strings.Contains(errs, key) {
			t.Errorf("join --control-plane, %s: exit %d, %s; want %q", c.name, code, errs, c.want)
		}
	}
	// Two hours later the owning token has expired (its expiration moved to the past):
	// the certificates are gone for kubeadm join.
	tok.Data["expiration"] = []byte(time.Now().Add(-time.Minute).UTC().Format(time.RFC3339))
	if _, err := cp.Client.CoreV1().Secrets("kube-system").Update(ctx, tok, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	if errs, code := joinWith(" --certificate-key " + key); code != 1 || !strings.Contains(errs, "This Secret might have expired") {
		t.Errorf("join with a key whose token expired: exit %d, %s", code, errs)
	}
	old := key
	key = upload()
	tok = owner()
	if errs, code := joinWith(" --certificate-key " + old); code != 1 || !strings.Contains(errs, "message authentication failed") {
		t.Errorf("join with the key of an earlier upload: exit %d, %s", code, errs)
	}
	// Deleting the owning token (kubeadm token delete) takes the certificates with it.
	tokenID := string(tok.Data["token-id"])
	if out, errs, code := run(t, c1, "sudo kubeadm token delete "+tokenID); code != 0 || out != fmt.Sprintf("bootstrap token %q deleted\n", tokenID) {
		t.Fatalf("token delete of the owner of kubeadm-certs: exit %d, %q, %s", code, out, errs)
	}
	if errs, code := joinWith(" --certificate-key " + key); code != 1 || !strings.Contains(errs, "This Secret might have expired") {
		t.Errorf("join with a key whose token was deleted: exit %d, %s", code, errs)
	}
	key = upload()
	if c4.Joined() || len(f.EtcdMembers()) != 3 {
		t.Fatalf("refused joins left joined=%v, %d members", c4.Joined(), len(f.EtcdMembers()))
	}
	if errs, code := joinWith(" --certificate-key=" + key); code != 0 {
		t.Fatalf("join with the key: exit %d, %s", code, errs)
	}
	if got := list().names(); len(got) != 4 || got[3] != c4.Name {
		t.Fatalf("members after the join: %v", got)
	}
	if err := cp.WaitNodeReady(ctx, c4.Name, true, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	// kubeadm reset removes the node's member (kubeadm's remove-etcd-member phase).
	if _, errs, code := run(t, redial(t, f, c4, op), "kubeadm reset -f"); code != 0 {
		t.Fatalf("reset: exit %d, %s", code, errs)
	}
	if got := list().names(); len(got) != 3 {
		t.Fatalf("members after reset: %v", got)
	}

	// A powered-off member is unhealthy; etcd refuses to remove a started member when the
	// rest would not have a quorum started, and removes the dead one.
	if err := f.PowerOff(cs[2].ID); err != nil {
		t.Fatal(err)
	}
	out, errs, code = run(t, c1, etcdctlTLS+"endpoint health --cluster -w json")
	hs = nil
	if err := json.Unmarshal([]byte(out), &hs); err != nil || code != 1 || !strings.Contains(errs, "Error: unhealthy cluster") {
		t.Fatalf("endpoint health with a member off: exit %d, %q, %v, %s", code, out, err, errs)
	}
	bad := 0
	for _, h := range hs {
		if !h.Health {
			bad++
			if !strings.Contains(h.Endpoint, cs[2].Address) || h.Error != "context deadline exceeded" {
				t.Errorf("unhealthy endpoint %+v; want %s's", h, cs[2].Name)
			}
		}
	}
	if bad != 1 {
		t.Errorf("%d unhealthy endpoints, want 1: %+v", bad, hs)
	}
	l = list()
	if _, errs, code := run(t, c1, etcdctlTLS+"member remove "+l.id(cs[1].Name)); code != 1 || !strings.Contains(errs, "not enough started members") {
		t.Errorf("removing a started member with another off: exit %d, %s", code, errs)
	}
	if _, errs, code := run(t, c1, etcdctlTLS+"member remove zz"); code != 128 || !strings.Contains(errs, "expecting ID in Hex") {
		t.Errorf("member remove zz: exit %d, %s", code, errs)
	}
	if _, errs, code := run(t, c1, etcdctlTLS+"member remove 1234"); code != 1 || !strings.Contains(errs, "member not found") {
		t.Errorf("member remove of an unknown id: exit %d, %s", code, errs)
	}
	out, errs, code = run(t, c1, etcdctlTLS+"member remove "+l.id(cs[2].Name))
	if code != 0 || !strings.Contains(out, "Member "+l.id(cs[2].Name)+" removed from cluster") {
		t.Fatalf("member remove of the dead member: exit %d, %q, %s", code, out, errs)
	}
	if got := list().names(); len(got) != 2 {
		t.Fatalf("members after the removal: %v", got)
	}
	// Two members and one off: no quorum, nothing answers.
	if err := f.PowerOff(cs[1].ID); err != nil {
		t.Fatal(err)
	}
	if _, errs, code := run(t, c1, etcdctlTLS+"member list -w json"); code != 1 || !strings.Contains(errs, "context deadline exceeded") {
		t.Errorf("member list without quorum: exit %d, %s", code, errs)
	}
}

// TestKubeadmResetEtcd: kubeadm reset as kubeadm v1.37 does it on a stacked-etcd control
// node: without -f it asks and, with no terminal, fails with nothing changed; with the
// Node deleted it cannot read this node's configuration, warns and leaves the member in
// (its local etcd stopped: unhealthy, not started, so a member add that would lack a
// started quorum is refused); with the Node it removes the member; the only member left
// is kept, silently.
func TestKubeadmResetEtcd(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	op := newOperator(t)
	f := newFleet(t, op)
	f.Cluster = &KubeCluster{CP: cp}
	var cs []*VM
	for i := 1; i <= 4; i++ {
		v := boot(t, f, fmt.Sprintf("tb-reset-control-%d", i), map[string]string{"cookbook-role": "control"})
		f.AddEtcdMember(v)
		cs = append(cs, v)
		if err := cp.AddNode(ctx, lab.NodeSpec{Name: v.Name, Address: v.Address}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cp.RemoveNode(context.Background(), v.Name) })
	}
	c1 := redial(t, f, cs[0], op)
	members := func() string { t.Helper(); return strings.Join(listMembers(t, c1).names(), ",") }
	// unhealthy is the endpoints endpoint health --cluster reports unhealthy, by name.
	unhealthy := func() string {
		t.Helper()
		out, errs, code := run(t, c1, etcdctlTLS+"endpoint health --cluster -w json")
		var hs []struct {
			Endpoint string `json:"endpoint"`
			Health   bool   `json:"health"`
		}
		if err := json.Unmarshal([]byte(out), &hs); err != nil {
			t.Fatalf("endpoint health: exit %d, %q: %v, %s", code, out, err, errs)
		}
		var bad []string
		for _, h := range hs {
			for _, v := range cs {
				if !h.Health && strings.Contains(h.Endpoint, "//"+v.Address+":") {
					bad = append(bad, v.Name)
				}
			}
		}
		if (len(bad) > 0) != (code == 1 && strings.Contains(errs, "Error: unhealthy cluster")) {
			t.Errorf("endpoint health: exit %d, %s with unhealthy %v", code, errs, bad)
		}
		sort.Strings(bad)
		return strings.Join(bad, ",")
	}
	all := "tb-reset-control-1,tb-reset-control-2,tb-reset-control-3,tb-reset-control-4"

	// No -f: kubeadm asks, nobody answers, nothing is reset.
	c4 := redial(t, f, cs[3], op)
	out, errs, code := run(t, c4, "sudo kubeadm reset")
	if code != 1 || !strings.Contains(out, "[reset] Are you sure you want to proceed? [y/N]: ") ||
		!strings.Contains(errs, "won't proceed; the user didn't answer (Y|y) in order to continue") {
		t.Errorf("kubeadm reset without -f: exit %d, %q, %s", code, out, errs)
	}
	if got, bad := members(), unhealthy(); got != all || bad != "" {
		t.Fatalf("after a refused reset: members %s, unhealthy %q", got, bad)
	}

	// The Node deleted first: the member stays, its etcd stopped.
	if err := cp.RemoveNode(ctx, cs[3].Name); err != nil {
		t.Fatal(err)
	}
	out, errs, code = run(t, c4, "sudo kubeadm reset -f")
	if code != 0 || !strings.Contains(errs, "[reset] Unable to fetch the kubeadm-config ConfigMap from cluster") ||
		strings.Contains(errs, "Failed to remove etcd member") || !strings.Contains(out, "[reset] Deleted contents of the etcd data directory: /var/lib/etcd") {
		t.Errorf("kubeadm reset -f with the Node deleted: exit %d, %q, %s", code, out, errs)
	}
	if got, bad := members(), unhealthy(); got != all || bad != "tb-reset-control-4" {
		t.Errorf("after a reset with the Node deleted: members %s, unhealthy %q; want all four, control-4 unhealthy", got, bad)
	}
	if _, errs, code := run(t, c4, etcdctlTLS+"member list"); code != 1 || !strings.Contains(errs, "context deadline exceeded") {
		t.Errorf("etcdctl on the reset VM: exit %d, %s", code, errs)
	}
	// It stays stopped over a reboot (its manifests are gone).
	if err := f.Reboot(ctx, cs[3].ID, false); err != nil {
		t.Fatal(err)
	}
	waitUp(t, f, cs[3], op)
	if bad := unhealthy(); bad != "tb-reset-control-4" {
		t.Errorf("after the reset VM's reboot: unhealthy %q, want tb-reset-control-4", bad)
	}

	// With its Node, control-3's reset removes its member: 3 members, 2 started. A
	// fourth member would need 3 started: etcd refuses the add.
	out, errs, code = run(t, redial(t, f, cs[2], op), "sudo kubeadm reset -f")
	if code != 0 || errs != "" || !strings.Contains(out, "[reset] Deleted contents of the etcd data directory") {
		t.Errorf("kubeadm reset -f with the Node: exit %d, %q, %s", code, out, errs)
	}
	if got := members(); got != "tb-reset-control-1,tb-reset-control-2,tb-reset-control-4" {
		t.Errorf("after a reset with the Node: members %s", got)
	}
	c5 := boot(t, f, "tb-reset-control-5", map[string]string{"cookbook-role": "control"})
	if err := f.joinEtcd(c5); err == nil || err.Error() != "etcdserver: unhealthy cluster" {
		t.Errorf("member add with 2 of 3 started: %v, want etcdserver: unhealthy cluster", err)
	}
	// The stale member removed from another node, then control-2 by its reset: control-1
	// is the only member, and its own reset keeps it without a word.
	var l memberList
	out, _, _ = run(t, c1, etcdctlTLS+"member list -w json")
	_ = json.Unmarshal([]byte(out), &l)
	if _, errs, code := run(t, c1, etcdctlTLS+"member remove "+l.id(cs[3].Name)); code != 0 {
		t.Fatalf("member remove of the reset node's member: exit %d, %s", code, errs)
	}
	if _, errs, code := run(t, redial(t, f, cs[1], op), "sudo kubeadm reset -f"); code != 0 || errs != "" {
		t.Errorf("reset of control-2: exit %d, %s", code, errs)
	}
	if got := members(); got != "tb-reset-control-1" {
		t.Fatalf("members %s, want control-1 alone", got)
	}
	out, errs, code = run(t, c1, "sudo kubeadm reset -f")
	if code != 0 || errs != "" {
		t.Errorf("reset of the last member: exit %d, %q, %s", code, out, errs)
	}
	if ms := f.EtcdMembers(); len(ms) != 1 || ms[0].Name != cs[0].Name || !ms[0].Stopped {
		t.Errorf("after the last member's reset: %+v, want control-1 kept, stopped", ms)
	}
}

// waitUp waits until the VM answers SSH again.
func waitUp(t *testing.T, f *Fleet, v *VM, op operator) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		cl, err := dial(t, f, v, op)
		if err == nil {
			cl.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not back: %v", v.Name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
