package cloud

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestFaultCountAndPath: a rule with Count fails that many matching requests and then
// lets later rules apply; Path matches one path, not those under it; each injected
// failure is listed by Injected.
func TestFaultCountAndPath(t *testing.T) {
	c, err := New("127.0.0.1:0", Seed{}, Options{AddressPrefix: "127.43.0"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	servers := "/compute/v2.1/servers"
	c.SetFaults(Faults{Rules: []FaultRule{
		{Method: "POST", Path: servers, ErrorRate: 1, After: true, Count: 2},
		{Method: "POST", PathPrefix: servers, Status: 500, ErrorRate: 1},
	}})
	try := func(method, path string) (int, bool) {
		c.mu.Lock()
		defer c.mu.Unlock()
		r, fail := c.faultFor(method, path)
		return r.Status, fail
	}
	type res struct {
		Status int
		Fail   bool
	}
	var got []res
	for _, p := range []string{servers, servers + "/x/action", servers, servers} {
		s, f := try("POST", p)
		got = append(got, res{s, f})
	}
	if s, f := try("GET", servers); f {
		t.Errorf("GET failed (%d): no rule names it", s)
	}
	// The first two creates fail by the counted rule; the action, and the third create
	// once the count is spent, by the second rule.
	want := []res{{0, true}, {500, true}, {0, true}, {500, true}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("faults (-want +got):\n%s", diff)
	}
	wantInjected := []InjectedFault{{"POST", servers, true}, {"POST", servers + "/x/action", false}, {"POST", servers, true}, {"POST", servers, false}}
	if diff := cmp.Diff(wantInjected, c.Injected()); diff != "" {
		t.Errorf("injected (-want +got):\n%s", diff)
	}
	if f := c.Faults(); f.Rules[0].Count != 0 {
		t.Errorf("Faults() shows count %d left, want 0", f.Rules[0].Count)
	}
}
