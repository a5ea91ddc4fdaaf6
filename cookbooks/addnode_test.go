package cookbooks

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"example.com/cookbook/config"
	"example.com/cookbook/cookbooks/pipeline"
)

// TestAddNodeKeepsWhatItDecided plans add-k8s-node with one configuration, then plans it
// again (a resume) after the role's configuration was edited: the resumed plan does what
// the first one decided, and a warning names the keys that changed.
func TestAddNodeKeepsWhatItDecided(t *testing.T) {
	var logged bytes.Buffer
	env := &Env{Log: slog.New(slog.NewTextHandler(&logged, nil))}
	v := pipeline.NewValues("r-add", nil, nil)
	plan := func(role *config.Role) []pipeline.Step {
		t.Helper()
		cl := &config.Cluster{Name: "toy", Roles: map[string]*config.Role{"worker": role}}
		a := &adder{env: env, cl: cl, roleName: "worker", role: role, flavor: "g3.big"}
		a.c = &clients{env: env, cl: cl} // planning reads nothing
		steps, err := a.plan(context.Background(), v)
		if err != nil {
			t.Fatal(err)
		}
		return steps
	}
	summary := func(steps []pipeline.Step) []string {
		var out []string
		for _, s := range steps {
			out = append(out, s.Name+": "+s.Desc(v))
		}
		return out
	}

	first := plan(&config.Role{Prefix: "w", Flavor: "g3.small", Image: "bookworm", Labels: map[string]string{"tier": "a"},
		Provision: [][]string{{"apt-get", "update"}}, RebootAfterProvision: true})
	want := summary(first)
	if !strings.Contains(strings.Join(want, "\n"), "provision: run the 1 provisioning command(s)") || !strings.Contains(strings.Join(want, "\n"), "reboot: ") {
		t.Fatalf("first plan:\n%s", strings.Join(want, "\n"))
	}
	if logged.Len() != 0 {
		t.Errorf("a first plan warns:\n%s", logged.String())
	}

	edited := plan(&config.Role{Prefix: "w", Flavor: "g3.huge", Image: "trixie", Labels: map[string]string{"tier": "b"},
		Provision:    [][]string{{"apt-get", "update"}, {"apt-get", "install", "-y", "htop"}},
		ExtraStorage: &config.ExtraStorage{Device: "/dev/vdb", MountPoint: "/srv"}})
	if diff := cmp.Diff(want, summary(edited)); diff != "" {
		t.Errorf("the resumed plan follows the edited configuration (-recorded +resumed):\n%s", diff)
	}
	spec, err := keyNodeSpec.Must(v)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Flavor != "g3.big" || spec.Image != "bookworm" || spec.Labels["tier"] != "a" || len(spec.Provision) != 1 || spec.ExtraStorage != nil {
		t.Errorf("recorded spec changed: %+v", spec)
	}
	for _, w := range []string{"level=WARN", "the configuration changed since this run was planned",
		`changed="clusters.toy.roles.worker.extraStorage, clusters.toy.roles.worker.image, clusters.toy.roles.worker.labels, clusters.toy.roles.worker.provision, clusters.toy.roles.worker.rebootAfterProvision"`} {
		if !strings.Contains(logged.String(), w) {
			t.Errorf("log lacks %q:\n%s", w, logged.String())
		}
	}
}
