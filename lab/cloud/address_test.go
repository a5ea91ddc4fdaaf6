package cloud

import (
	"net/netip"
	"testing"
)

// TestAddressesOfAThousandServers: every server address is a valid, distinct IPv4 address
// in the loopback range (a lab of hundreds of workers).
func TestAddressesOfAThousandServers(t *testing.T) {
	c := &Cloud{opts: Options{AddressPrefix: "127.42.0"}, st: newStore(Seed{})}
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		a := c.nextAddress()
		ip, err := netip.ParseAddr(a)
		if err != nil || !ip.Is4() || !ip.IsLoopback() || ip.As4()[3] == 0 || ip.As4()[3] == 255 {
			t.Fatalf("server %d: address %q is not a loopback host address (%v)", i+1, a, err)
		}
		if seen[a] {
			t.Fatalf("server %d: address %s given twice", i+1, a)
		}
		seen[a] = true
	}
}
