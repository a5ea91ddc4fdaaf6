package cookbooks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/dryrun"
	"example.com/cookbook/k8sops"
	"example.com/cookbook/lab/cloud"
	"example.com/cookbook/openstack"
)

func TestInstanceHost(t *testing.T) {
	tests := []struct{ name, inst, want string }{
		{"hostname", "tools-k8s-worker-1", "tools-k8s-worker-1"},
		{"hostname:port", "tools-k8s-worker-1:9100", "tools-k8s-worker-1"},
		{"fqdn:port", "tools-k8s-worker-1.tools.eqiad1.wikimedia.cloud:9100", "tools-k8s-worker-1.tools.eqiad1.wikimedia.cloud"},
		{"ipv4", "172.16.1.5", "172.16.1.5"},
		{"ipv4:port", "172.16.1.5:9100", "172.16.1.5"},
		{"[ipv6]:port", "[fd00::5]:9100", "fd00::5"},
		{"ipv6", "fd00::5", "fd00::5"},
		{"[ipv6]", "[fd00::5]", "fd00::5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := instanceHost(tt.inst); got != tt.want {
				t.Errorf("instanceHost(%q) = %q, want %q", tt.inst, got, tt.want)
			}
		})
	}
}

func TestMatchInstances(t *testing.T) {
	node := func(name string, addrs ...corev1.NodeAddress) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{Addresses: addrs}}
	}
	internal := func(a string) corev1.NodeAddress { return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a} }
	external := func(a string) corev1.NodeAddress { return corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: a} }
	workers := []*corev1.Node{
		node("w-1", internal("172.16.0.1"), corev1.NodeAddress{Type: corev1.NodeHostName, Address: "w-1"}),
		node("w-2", internal("172.16.0.2"), internal("fd00::2")),
		node("w-3"), // no addresses reported: only its server's
		node("w-4", external("185.15.56.4")),
	}
	fqdn := func(n string) string { return n + ".tools.example" }
	tests := []struct {
		name        string
		reported    map[string]float64
		servers     map[string]string
		wantNodes   map[string]float64
		wantForeign []string
	}{
		{"by name", map[string]float64{"w-1": 3}, nil, map[string]float64{"w-1": 3}, nil},
		{"by fqdn", map[string]float64{"w-2.tools.example": 2}, nil, map[string]float64{"w-2": 2}, nil},
		{"by InternalIP", map[string]float64{"172.16.0.1": 4, "fd00::2": 1}, nil, map[string]float64{"w-1": 4, "w-2": 1}, nil},
		{"the highest of a node's instances", map[string]float64{"w-2": 1, "172.16.0.2": 6}, nil, map[string]float64{"w-2": 6}, nil},
		{"by the server's address", map[string]float64{"172.16.0.3": 5}, map[string]string{"172.16.0.3": "w-3"}, map[string]float64{"w-3": 5}, nil},
		{"an address of no node nor server", map[string]float64{"172.16.0.9": 5, "w-1": 1}, map[string]string{"172.16.0.3": "w-3"}, map[string]float64{"w-1": 1}, []string{"172.16.0.9"}},
		{"an ExternalIP is not an instance's", map[string]float64{"185.15.56.4": 5}, nil, map[string]float64{}, []string{"185.15.56.4"}},
		{"a server that is no worker", map[string]float64{"172.16.0.8": 5}, map[string]string{"172.16.0.8": "control-1"}, map[string]float64{}, []string{"172.16.0.8"}},
		{"a Node's InternalIP wins over a server's address", map[string]float64{"172.16.0.1": 2}, map[string]string{"172.16.0.1": "w-3"}, map[string]float64{"w-1": 2}, nil},
		{"other hosts", map[string]float64{"elsewhere-1": 2, "w-1.other.example": 1}, nil, map[string]float64{}, []string{"elsewhere-1", "w-1.other.example"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, foreign := matchInstances(tt.reported, workers, fqdn, tt.servers)
			if diff := cmp.Diff(tt.wantNodes, got); diff != "" {
				t.Errorf("nodes (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantForeign, foreign); diff != "" {
				t.Errorf("foreign instances (-want +got):\n%s", diff)
			}
		})
	}
}

// stuckCloud is a lab cloud (in-process, over HTTP) with one ACTIVE server w-1, the
// cookbook's OpenStack client for it (dry-run or not), and a fake Kubernetes API with a
// NotReady Node w-1 on boot id "old".
type stuckCloud struct {
	cloud  *cloud.Cloud
	env    *Env
	c      *clients
	client *fake.Clientset
	id     string
}

func newStuckCloud(t *testing.T, dry bool) *stuckCloud {
	t.Helper()
	// client-go's fake sends no watch-list bookmark: watch the old way.
	t.Setenv("KUBE_FEATURE_WatchListClient", "false")
	lc, err := cloud.New("127.0.0.1:0", cloud.Seed{Users: []cloud.User{{Name: "admin", Password: "pw"}}}, cloud.Options{RebootTime: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lc.Close() })
	srv, err := lc.AddServer(context.Background(), cloud.Server{Name: "w-1"})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "clouds.yaml")
	yaml := fmt.Sprintf("clouds:\n  lab:\n    auth:\n      auth_url: %s\n      username: admin\n      password: pw\n      project_name: lab\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n", lc.AuthURL())
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	gate := &dryrun.Gate{DryRun: dry, Log: log}
	oc, err := openstack.New(context.Background(), openstack.Options{Cloud: "lab", CloudsFile: file, Gate: gate, Log: log, BaseBackoff: time.Millisecond, PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewSimpleClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "w-1"}, Status: corev1.NodeStatus{
		NodeInfo:   corev1.NodeSystemInfo{BootID: "old"},
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionFalse}}}})
	env := &Env{Log: log, DryRun: dry, Gate: gate}
	c := &clients{env: env, cloud: oc, kube: &k8sops.Ops{Client: client, Log: log}}
	return &stuckCloud{cloud: lc, env: env, c: c, client: client, id: srv.ID}
}

// reboots is the number of reboot (or other server) actions the cloud received.
func (s *stuckCloud) reboots() int { return s.cloud.Writes()["POST /compute/v2.1/servers/{id}/action"] }

// comeBack makes the Node report boot id "new" and Ready.
func (s *stuckCloud) comeBack(t *testing.T) {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "w-1"}, Status: corev1.NodeStatus{
		NodeInfo:   corev1.NodeSystemInfo{BootID: "new"},
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
	if _, err := s.client.CoreV1().Nodes().UpdateStatus(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		t.Error(err)
	}
}

// TestStuckHardRebootResume: hardReboot records the reboot as sent before its request,
// also when the request fails; with it recorded it only waits for the node (no request
// when the node comes back), sends it again when the node is not back within the timeout
// and the server is ACTIVE, and fails naming the status when a reboot is under way; a
// dry-run with it recorded neither sends nor waits, and one without it records nothing
// that is saved (the dry-run's values are never saved) and sends nothing.
func TestStuckHardRebootResume(t *testing.T) {
	ctx := context.Background()
	issued := pipeline.In(pipeline.Scope("w-1"), keyNodeHardRebootIssued)
	recorded := func(t *testing.T) *pipeline.Values {
		v := pipeline.NewValues("r", nil, nil)
		if err := issued.Set(v, true); err != nil {
			t.Fatal(err)
		}
		return v
	}

	t.Run("recorded: waited for, not sent", func(t *testing.T) {
		s := newStuckCloud(t, false)
		time.AfterFunc(300*time.Millisecond, func() { s.comeBack(t) })
		if err := hardReboot(ctx, s.c, "w-1", recorded(t), "w-1", "old", 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if n := s.reboots(); n != 0 {
			t.Errorf("%d reboot actions, want 0", n)
		}
	})

	t.Run("recorded, not back, server ACTIVE: sent again", func(t *testing.T) {
		s := newStuckCloud(t, false)
		done := make(chan struct{})
		go func() { // the node comes back once the second reboot is sent
			defer close(done)
			for s.reboots() == 0 {
				time.Sleep(10 * time.Millisecond)
			}
			s.comeBack(t)
		}()
		if err := hardReboot(ctx, s.c, "w-1", recorded(t), "w-1", "old", 500*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		<-done
		if n := s.reboots(); n != 1 {
			t.Errorf("%d reboot actions, want 1", n)
		}
	})

	t.Run("recorded, not back, reboot under way: fails naming it", func(t *testing.T) {
		s := newStuckCloud(t, false)
		// A reboot the cloud holds in HARD_REBOOT (5 s) for longer than the wait.
		if err := s.c.cloud.Reboot(ctx, s.id, "w-1", true); err != nil {
			t.Fatal(err)
		}
		before := s.reboots()
		err := hardReboot(ctx, s.c, "w-1", recorded(t), "w-1", "old", 50*time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), "(server HARD_REBOOT)") || !errors.Is(err, k8sops.ErrTimeout) {
			t.Errorf("err = %v, want a timeout naming HARD_REBOOT", err)
		}
		if n := s.reboots() - before; n != 0 {
			t.Errorf("%d reboot actions, want 0", n)
		}
	})

	t.Run("request fails: recorded as sent", func(t *testing.T) {
		s := newStuckCloud(t, false)
		s.cloud.SetFaults(cloud.Faults{Rules: []cloud.FaultRule{{Method: "POST", PathPrefix: "/compute/", ErrorRate: 1, Status: 409}}})
		v := pipeline.NewValues("r", nil, nil)
		if err := hardReboot(ctx, s.c, "w-1", v, "w-1", "old", time.Second); err == nil {
			t.Fatal("no error from a refused reboot")
		}
		if sent, ok, _ := issued.Lookup(v); !ok || !sent {
			t.Errorf("hard reboot recorded %v (set %v), want true", sent, ok)
		}
	})

	t.Run("dry-run", func(t *testing.T) {
		s := newStuckCloud(t, true)
		start := time.Now()
		if err := hardReboot(ctx, s.c, "w-1", recorded(t), "w-1", "old", time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := hardReboot(ctx, s.c, "w-1", pipeline.NewValues("r", nil, nil), "w-1", "old", time.Minute); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("the dry-runs took %s: they waited", took)
		}
		if n := s.cloud.TotalWrites(); n != 0 {
			t.Errorf("%d cloud writes in dry-run", n)
		}
		if _, skipped := s.env.Gate.Counts(); skipped != 1 {
			t.Errorf("%d skipped writes, want 1 (the hard reboot not recorded as sent)", skipped)
		}
	})
}
