package cookbooks

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/urfave/cli/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/config"
	"example.com/cookbook/k8sops"
)

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		10 * time.Minute: "10m", time.Hour: "1h", 90 * time.Second: "1m30s", 30 * time.Second: "30s", 0: "0s",
		time.Hour + 30*time.Minute: "1h30m",
	} {
		if got := ShortDuration(d); got != want {
			t.Errorf("ShortDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestUnique(t *testing.T) {
	if err := unique("hostname-list", []string{"a", "b"}); err != nil {
		t.Error(err)
	}
	err := unique("hostname-list", []string{"a", "b", "a"})
	if err == nil || err.Error() != "--hostname-list: a is listed twice" {
		t.Errorf("err = %v", err)
	}
}

// TestHostnameListOneSpellingPerNode: a node can be named in --hostname-list in one way
// only, its short hostname, so the same node cannot land twice in a batch (two step sets
// of one node in a group): the same name twice, with commas or spaces, is an error naming
// it; another case or the FQDN is no valid hostname.
func TestHostnameListOneSpellingPerNode(t *testing.T) {
	for _, tt := range []struct {
		list    string
		want    []string
		wantErr string
	}{
		{list: "w-1, w-2", want: []string{"w-1", "w-2"}},
		{list: "w-1,w-1", wantErr: "--hostname-list: w-1 is listed twice"},
		{list: "w-1 w-2 w-1", wantErr: "--hostname-list: w-1 is listed twice"},
		{list: "w-1,W-1", wantErr: `--hostname-list: "W-1" is not a valid hostname`},
		{list: "w-1,w-1.toolsbeta.example.org", wantErr: `--hostname-list: "w-1.toolsbeta.example.org" is not a valid hostname`},
	} {
		t.Run(tt.list, func(t *testing.T) {
			var got []string
			var err error
			app := &cli.App{Flags: []cli.Flag{&cli.StringFlag{Name: "hostname-list"}}, Action: func(c *cli.Context) error {
				got, err = hostnameList(c, "hostname-list")
				return nil
			}}
			if rerr := app.Run([]string{"x", "--hostname-list", tt.list}); rerr != nil {
				t.Fatal(rerr)
			}
			if tt.wantErr != "" {
				var in *InputError
				if !errors.As(err, &in) || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want bad input starting %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("list (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDrainOptionsFromConfig: the cluster's drain section gives the defaults, a flag on
// the command line wins over it, and without either the flags' own defaults hold.
func TestDrainOptionsFromConfig(t *testing.T) {
	yes, grace, timeout, skip := true, 30, config.Duration(20*time.Minute), config.Duration(0)
	withDrain := &config.Cluster{Drain: config.Drain{Force: &yes, DeleteEmptyDirData: &yes, GracePeriod: &grace, Timeout: &timeout, SkipWaitForDeleteTimeout: &skip}}
	sec := func(n int64) *int64 { return &n }
	tests := []struct {
		name string
		cl   *config.Cluster
		args []string
		want k8sops.DrainOptions
	}{
		{"flag defaults", &config.Cluster{}, nil,
			k8sops.DrainOptions{Timeout: k8sops.DefaultDrainTimeout, SkipWaitForDeleteTimeout: k8sops.DefaultSkipWaitForDeleteTimeout}},
		{"config defaults", withDrain, nil,
			k8sops.DrainOptions{Force: true, DeleteEmptyDirData: true, GracePeriodSeconds: sec(30), Timeout: 20 * time.Minute}},
		{"flags win", withDrain, []string{"--force=false", "--delete-emptydir-data=false", "--grace-period", "-1", "--drain-timeout", "3m", "--skip-wait-for-delete-timeout", "1m"},
			k8sops.DrainOptions{Timeout: 3 * time.Minute, SkipWaitForDeleteTimeout: time.Minute}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got k8sops.DrainOptions
			var err error
			app := &cli.App{Flags: drainFlags(), Action: func(c *cli.Context) error {
				got, err = drainOptions(c, tt.cl)
				return nil
			}}
			if runErr := app.Run(append([]string{"x"}, tt.args...)); runErr != nil {
				t.Fatal(runErr)
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("drain options (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRoleFlagAliases: --role takes a role's name or one of its aliases and gives the
// role's own name; an unknown name is bad input listing the names with their aliases.
func TestRoleFlagAliases(t *testing.T) {
	nfs := &config.Role{Prefix: "tb-worker-nfs", Aliases: []string{"worker_nfs"}}
	cl := &config.Cluster{Name: "tb", Roles: map[string]*config.Role{"worker-nfs": nfs, "worker": {Prefix: "tb-worker"}}}
	for _, tt := range []struct{ arg, want, err string }{
		{"worker-nfs", "worker-nfs", ""},
		{"worker_nfs", "worker-nfs", ""},
		{"worker", "worker", ""},
		{"worker_nf", "", `--role: role "worker_nf" is not defined for cluster tb (known: worker, worker-nfs (worker_nfs))`},
	} {
		var name string
		var err error
		app := &cli.App{Flags: []cli.Flag{&cli.StringFlag{Name: "role"}}, Action: func(c *cli.Context) error {
			name, _, err = roleFlag(c, cl)
			return nil
		}}
		if runErr := app.Run([]string{"x", "--role", tt.arg}); runErr != nil {
			t.Fatal(runErr)
		}
		switch {
		case tt.err == "" && (err != nil || name != tt.want):
			t.Errorf("--role %s = %q, %v; want %q", tt.arg, name, err, tt.want)
		case tt.err != "" && (err == nil || err.Error() != tt.err || !errors.As(err, new(*InputError))):
			t.Errorf("--role %s: error %v, want bad input %q", tt.arg, err, tt.err)
		}
	}
}

// TestNotReadySince: the Ready condition's last transition, and whether it is not True;
// a node without the condition counts from its creation.
func TestNotReadySince(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	node := func(st corev1.ConditionStatus) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{CreationTimestamp: metav1.NewTime(t0.Add(-time.Hour))}}
		if st != "" {
			n.Status.Conditions = []corev1.NodeCondition{
				{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, LastTransitionTime: metav1.NewTime(t0.Add(-2 * time.Hour))},
				{Type: corev1.NodeReady, Status: st, LastTransitionTime: metav1.NewTime(t0)},
			}
		}
		return n
	}
	for _, tt := range []struct {
		st    corev1.ConditionStatus
		since time.Time
		stuck bool
	}{
		{corev1.ConditionTrue, t0, false},
		{corev1.ConditionFalse, t0, true},
		{corev1.ConditionUnknown, t0, true},
		{"", t0.Add(-time.Hour), true},
	} {
		since, stuck := notReadySince(node(tt.st))
		if !since.Equal(tt.since) || stuck != tt.stuck {
			t.Errorf("Ready=%q: since %v, stuck %v; want %v, %v", tt.st, since, stuck, tt.since, tt.stuck)
		}
	}
}
