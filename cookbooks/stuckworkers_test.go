package cookbooks

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
