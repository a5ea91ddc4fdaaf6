package vm

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// TestExternalEtcd: with an external etcd the etcd VMs hold the membership and answer
// etcdctl only with the configured certificates and their own client URL (kubeadm's
// paths are not there, and their server certificate is not valid for 127.0.0.1); a
// control VM has no local etcd: connection refused, or kubeadm's certificates missing.
// kubeadm reset on a control VM leaves the membership alone.
func TestExternalEtcd(t *testing.T) {
	op := newOperator(t)
	f := newFleet(t, op)
	certs := &EtcdCerts{CACert: "/etc/etcd/ssl/ca.pem", Cert: "/etc/etcd/ssl/client.pem", Key: "/etc/etcd/ssl/client.key"}
	f.ExternalEtcd = certs
	var es []*VM
	for i := 1; i <= 3; i++ {
		v := boot(t, f, fmt.Sprintf("tb-ext-etcd-%d", i), map[string]string{"cookbook-role": "etcd"})
		f.AddEtcdMember(v)
		es = append(es, v)
	}
	c1 := boot(t, f, "tb-ext-control-1", map[string]string{"cookbook-role": "control"})
	tls := func(ep string) string {
		return fmt.Sprintf("etcdctl --endpoints %s --cacert %s --cert %s --key %s ", ep, certs.CACert, certs.Cert, certs.Key)
	}
	own := "https://" + es[0].Address + ":2379"

	out, errs, code := es[0].Exec(tls(own) + "member list -w json")
	var l memberList
	if code != 0 || json.Unmarshal([]byte(out), &l) != nil {
		t.Fatalf("member list on the etcd VM: exit %d: %s%s", code, out, errs)
	}
	if got := strings.Join(l.names(), ","); got != "tb-ext-etcd-1,tb-ext-etcd-2,tb-ext-etcd-3" {
		t.Errorf("members = %s", got)
	}
	if _, errs, code := es[0].Exec(etcdctlTLS + "member list -w json"); code != 128 || !strings.Contains(errs, "Error: open /etc/kubernetes/pki/etcd/ca.crt: no such file or directory") {
		t.Errorf("kubeadm's paths on the etcd VM: exit %d: %s", code, errs)
	}
	if _, errs, code := es[0].Exec(tls("https://127.0.0.1:2379") + "member list -w json"); code != 1 || !strings.Contains(errs, "x509: certificate is valid for tb-ext-etcd-1") {
		t.Errorf("127.0.0.1 on the etcd VM: exit %d: %s", code, errs)
	}
	if _, errs, code := es[0].Exec("etcdctl --endpoints " + own + " member list -w json"); code != 1 || !strings.Contains(errs, "Error: context deadline exceeded") {
		t.Errorf("no certificates on the etcd VM: exit %d: %s", code, errs)
	}
	if _, errs, code := c1.Exec(etcdctlTLS + "member list -w json"); code != 128 || !strings.Contains(errs, "no such file or directory") {
		t.Errorf("kubeadm's paths on the control VM: exit %d: %s", code, errs)
	}
	if _, errs, code := c1.Exec(tls("https://127.0.0.1:2379") + "endpoint health --cluster -w json"); code != 1 || !strings.Contains(errs, "dial tcp 127.0.0.1:2379: connect: connection refused") {
		t.Errorf("the configured certificates on the control VM: exit %d: %s", code, errs)
	}

	// A powered-off etcd VM's member is unhealthy, as the health check of another says.
	if err := f.PowerOff(es[2].ID); err != nil {
		t.Fatal(err)
	}
	out, _, code = es[0].Exec(tls(own) + "endpoint health --cluster -w json")
	if code != 1 || !strings.Contains(out, `"endpoint":"https://`+es[2].Address+`:2379","health":false`) {
		t.Errorf("health with etcd-3 off: exit %d: %s", code, out)
	}

	// kubeadm reset on the control VM says etcd is external; the members stay.
	out, _, code = c1.Exec("kubeadm reset -f")
	if code != 0 || !strings.Contains(out, "Assuming external etcd") || len(f.EtcdMembers()) != 3 {
		t.Errorf("kubeadm reset: exit %d: %s; members %v", code, out, f.EtcdMembers())
	}
}
