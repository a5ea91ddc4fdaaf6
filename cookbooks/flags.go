package cookbooks

import (
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"example.com/cookbook/config"
	"example.com/cookbook/k8sops"
)

// The checks below make durations and numbers that make no sense bad input in a
// cookbook's Prepare: exit 2, nothing recorded. Each message names the flag, the value and
// what was expected.

// positiveDuration reads a duration flag that must be more than zero (a timeout);
// example is a sensible value to suggest.
func positiveDuration(c *cli.Context, name string, example time.Duration) (time.Duration, error) {
	d := c.Duration(name)
	if d <= 0 {
		return d, BadInputf("--%s: %s is not a positive duration (expected one such as %s)", name, d, ShortDuration(example))
	}
	return d, nil
}

// nonNegativeDuration reads a duration flag that may be zero (none) or more.
func nonNegativeDuration(c *cli.Context, name string, example time.Duration) (time.Duration, error) {
	d := c.Duration(name)
	if d < 0 {
		return d, BadInputf("--%s: %s is negative (expected a duration of 0 or more, such as %s)", name, d, ShortDuration(example))
	}
	return d, nil
}

// positiveInt reads a number flag that must be 1 or more.
func positiveInt(c *cli.Context, name string) (int, error) {
	n := c.Int(name)
	if n < 1 {
		return n, BadInputf("--%s: %d is not a positive number (expected 1 or more)", name, n)
	}
	return n, nil
}

// healthWindowFlag is --health-window of the rolling cookbooks.
func healthWindowFlag() cli.Flag {
	return &cli.DurationFlag{Name: "health-window", Value: k8sops.DefaultHealthWindow,
		Usage: "how long the cluster must stay healthy without a break (nodes Ready, disruption budgets whole, the batch's pods Running) before the next batch"}
}

// NonNegativeInt checks a number flag that may be 0 or more (`cookbook runs --limit`).
func NonNegativeInt(name string, n int) error {
	if n < 0 {
		return BadInputf("--%s: %d is negative (expected 0 or more)", name, n)
	}
	return nil
}

// unique checks that a list flag names nothing twice.
func unique(name string, items []string) error {
	seen := make(map[string]bool, len(items))
	for _, it := range items {
		if seen[it] {
			return BadInputf("--%s: %s is listed twice", name, it)
		}
		seen[it] = true
	}
	return nil
}

// ShortDuration formats d without the zero units time.Duration.String adds: 10m, not
// 10m0s; 1h, not 1h0m0s.
func ShortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// roleFlag reads --role: a role of the cluster by its name or one of its aliases
// (worker_nfs for worker-nfs); it returns the role's own name, which is what the run
// records and compares. Empty when the flag is not given.
func roleFlag(c *cli.Context, cl *config.Cluster) (string, *config.Role, error) {
	if !c.IsSet("role") {
		return "", nil, nil
	}
	name, role, err := cl.RoleNamed(c.String("role"))
	if err != nil {
		return "", nil, BadInputf("--role: %w", err)
	}
	return name, role, nil
}

// hostnameList reads a list of node names given with commas or spaces (the Toolforge
// cookbooks take "H1 H2"): each an RFC 1123 hostname, none twice (the same node twice
// would land twice in one batch). An empty item between two commas is a mistake, not
// nothing. It returns nil when the flag is not given.
func hostnameList(c *cli.Context, flag string) ([]string, error) {
	if !c.IsSet(flag) {
		return nil, nil
	}
	var list []string
	for _, item := range strings.Split(c.String(flag), ",") {
		names := strings.Fields(item)
		if len(names) == 0 {
			names = []string{""}
		}
		for _, h := range names {
			if err := config.CheckHostname(h); err != nil {
				return nil, BadInputf("--%s: %w", flag, err)
			}
			list = append(list, h)
		}
	}
	if err := unique(flag, list); err != nil {
		return nil, err
	}
	return list, nil
}
