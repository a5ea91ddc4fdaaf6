package openstack

import (
	"context"
	"strings"
	"testing"
	"time"

	"example.com/cookbook/lab/cloud"
)

// TestLimits: the limits and usage read from the cloud's GET /limits, and Check naming
// what the quota lacks for servers of a flavor; the cloud refuses the server the check
// said would not fit, with Nova's message.
func TestLimits(t *testing.T) {
	e := newEnv(t, cloud.Options{Quota: cloud.Quota{Instances: 3, Cores: 10, RAM: 20000}, Hypervisors: 2})
	c := e.client(t, "lab", false)
	ctx := context.Background()
	f, err := c.FlavorSize(ctx, "g4.cores4.ram8")
	if err != nil || f.ID != "f1" || f.VCPUs != 4 || f.RAM != 8192 {
		t.Fatalf("flavor size: %+v %v", f, err)
	}
	s, _, err := c.CreateServer(ctx, CreateOpts{Name: "w-1", FlavorID: "f1", ImageID: seed.Images[0].ID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitActive(ctx, s.ID, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	l, err := c.Limits(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Limits{Instances: 3, InstancesUsed: 1, Cores: 10, CoresUsed: 4, RAM: 20000, RAMUsed: 8192}); l != want {
		t.Fatalf("limits %+v, want %+v", l, want)
	}
	if err := l.Check(NeedFor(1, f)); err != nil {
		t.Errorf("one more server fits: %v", err)
	}
	err = l.Check(NeedFor(2, f))
	if err == nil || err.Error() != "quota: need 8 cores, 6 left of 10; need 16384 MiB RAM, 11808 left of 20000" {
		t.Errorf("two more servers: %v", err)
	}
	if got := l.Left(); got != "2 instance(s), 6 core(s), 11808 MiB RAM" {
		t.Errorf("left: %q", got)
	}
	if err := (Limits{Instances: -1, Cores: -1, RAM: -1, CoresUsed: 5}).Check(NeedFor(10, f)); err != nil {
		t.Errorf("unlimited: %v", err)
	}
	if _, _, err := c.CreateServer(ctx, CreateOpts{Name: "w-2", FlavorID: "f1", ImageID: seed.Images[0].ID}); err != nil {
		t.Fatal(err)
	}
	_, _, err = c.CreateServer(ctx, CreateOpts{Name: "w-3", FlavorID: "f1", ImageID: seed.Images[0].ID})
	if err == nil || !strings.Contains(err.Error(), "Quota exceeded for cores: Requested 4, but already used 8 of 10 cores") {
		t.Errorf("third server: %v", err)
	}
}
