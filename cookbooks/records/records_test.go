package records

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/client-go/kubernetes"

	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/lab"
)

var cp *lab.ControlPlane

func TestMain(m *testing.M) { os.Exit(lab.RunTests(m, &cp)) }

func TestPutGetListPrune(t *testing.T) {
	lab.Need(t, cp)
	ctx := context.Background()
	c, err := kubernetes.NewForConfig(cp.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	recs := &Cluster{Client: c, Namespace: "kube-system", Cluster: "rec1"}
	other := &Cluster{Client: c, Namespace: "kube-system", Cluster: "rec2"}
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var ids []string
	for i := 0; i < 5; i++ {
		st := state.Done
		if i == 0 {
			st = state.Failed // unfinished: never pruned
		}
		r := &state.Run{Schema: state.SchemaVersion, ID: fmt.Sprintf("20260101-00000%d-abcdef", i), Cookbook: "toy", Cluster: "rec1",
			Status: st, StartedAt: start.Add(time.Duration(i) * time.Second), Holder: state.Holder{Host: "host-a"}}
		if err := recs.Put(ctx, r); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.ID)
	}
	if err := other.Put(ctx, &state.Run{Schema: state.SchemaVersion, ID: "20260101-000000-ffffff", Cookbook: "toy", Status: state.Done, StartedAt: start}); err != nil {
		t.Fatal(err)
	}
	// Replaced, not duplicated.
	r, err := recs.Get(ctx, ids[4])
	if err != nil {
		t.Fatal(err)
	}
	r.Error = "second save"
	if err := recs.Put(ctx, r); err != nil {
		t.Fatal(err)
	}
	if got, _ := recs.Get(ctx, ids[4]); got.Error != "second save" || got.Holder.Host != "host-a" {
		t.Errorf("Get after a second Put: %+v", got)
	}
	if _, err := recs.Get(ctx, "20990101-000000-000000"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of an unknown run: %v", err)
	}
	runs, errs := recs.List(ctx)
	if len(errs) > 0 || len(runs) != 5 || runs[0].ID != ids[4] {
		t.Fatalf("List: %d runs, %v", len(runs), errs)
	}
	deleted, err := recs.Prune(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{ids[2], ids[1]}, deleted); diff != "" {
		t.Errorf("pruned (-want +got):\n%s", diff)
	}
	runs, _ = recs.List(ctx)
	var left []string
	for _, r := range runs {
		left = append(left, r.ID)
	}
	if diff := cmp.Diff([]string{ids[4], ids[3], ids[0]}, left); diff != "" {
		t.Errorf("left (-want +got):\n%s", diff)
	}
	if runs, _ := other.List(ctx); len(runs) != 1 {
		t.Errorf("another cluster's records: %d", len(runs))
	}
}

func TestNewer(t *testing.T) {
	t1, t2 := time.Now(), time.Now().Add(time.Second)
	a, b := &state.Run{ID: "a", SavedAt: &t1}, &state.Run{ID: "b", SavedAt: &t2}
	if Newer(a, b) != b || Newer(b, a) != b || Newer(nil, a) != a || Newer(a, nil) != a {
		t.Error("Newer does not pick the copy saved last")
	}
}
