package openstack

import (
	"context"
	"fmt"
	"strings"

	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/flavors"
	"github.com/gophercloud/gophercloud/v2/openstack/compute/v2/limits"
)

// Limits are the project's absolute compute limits and what its servers use of them, as
// Nova's GET /limits reports them (RAM in MiB). A negative maximum is unlimited.
type Limits struct {
	Instances, InstancesUsed int
	Cores, CoresUsed         int
	RAM, RAMUsed             int
}

// Limits reads the project's compute limits and usage.
func (c *Client) Limits(ctx context.Context) (Limits, error) {
	l, err := limits.Get(ctx, c.compute, nil).Extract()
	if err != nil {
		return Limits{}, wrap("read the compute limits", err)
	}
	a := l.Absolute
	return Limits{Instances: a.MaxTotalInstances, InstancesUsed: a.TotalInstancesUsed,
		Cores: a.MaxTotalCores, CoresUsed: a.TotalCoresUsed, RAM: a.MaxTotalRAMSize, RAMUsed: a.TotalRAMUsed}, nil
}

// FlavorSize is a flavor with what a server of it takes of the quota.
type FlavorSize struct {
	Ref
	VCPUs int
	RAM   int // MiB
}

// FlavorSize finds the one flavor with that name or id and its size.
func (c *Client) FlavorSize(ctx context.Context, ref string) (FlavorSize, error) {
	f, err := c.Flavor(ctx, ref)
	if err != nil {
		return FlavorSize{}, err
	}
	got, err := flavors.Get(ctx, c.compute, f.ID).Extract()
	if err != nil {
		return FlavorSize{}, wrap("read flavor "+f.Name, err)
	}
	return FlavorSize{Ref: f, VCPUs: got.VCPUs, RAM: got.RAM}, nil
}

// Need is what n servers of a flavor take of the quota.
type Need struct {
	Instances, Cores, RAM int
}

// NeedFor is what n servers of flavor f take.
func NeedFor(n int, f FlavorSize) Need {
	return Need{Instances: n, Cores: n * f.VCPUs, RAM: n * f.RAM}
}

func (n Need) String() string {
	return fmt.Sprintf("%d instance(s), %d core(s), %d MiB RAM", n.Instances, n.Cores, n.RAM)
}

// QuotaError names what the quota lacks for a need.
type QuotaError struct{ Missing []string }

func (e *QuotaError) Error() string { return "quota: " + strings.Join(e.Missing, "; ") }

// Check returns a *QuotaError naming each resource the need does not fit in ("need 4
// cores, 2 left of 20"), nil when it fits.
func (l Limits) Check(n Need) error {
	var missing []string
	for _, r := range []struct {
		what             string
		need, used, have int
	}{{"instances", n.Instances, l.InstancesUsed, l.Instances}, {"cores", n.Cores, l.CoresUsed, l.Cores}, {"MiB RAM", n.RAM, l.RAMUsed, l.RAM}} {
		if r.have < 0 || r.need <= 0 {
			continue
		}
		if left := max(r.have-r.used, 0); r.need > left {
			missing = append(missing, fmt.Sprintf("need %d %s, %d left of %d", r.need, r.what, left, r.have))
		}
	}
	if missing == nil {
		return nil
	}
	return &QuotaError{Missing: missing}
}

// Left is what the quota has left, for a plan ("3 instance(s), 12 core(s), ...");
// unlimited resources say so.
func (l Limits) Left() string {
	f := func(have, used int, what string) string {
		if have < 0 {
			return "unlimited " + what
		}
		return fmt.Sprintf("%d %s", max(have-used, 0), what)
	}
	return strings.Join([]string{f(l.Instances, l.InstancesUsed, "instance(s)"), f(l.Cores, l.CoresUsed, "core(s)"), f(l.RAM, l.RAMUsed, "MiB RAM")}, ", ")
}
