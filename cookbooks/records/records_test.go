package records

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

// TestFollow: Follow sees each save of a run's record, with its log tail, in order,
// through a watch, until its function says stop; a deleted record is an error.
func TestFollow(t *testing.T) {
	lab.Need(t, cp)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := kubernetes.NewForConfig(cp.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	recs := &Cluster{Client: c, Namespace: "kube-system", Cluster: "follow1"}
	run := &state.Run{Schema: state.SchemaVersion, ID: "20260101-000000-f01100", Cookbook: "toy", Cluster: "follow1", Status: state.Running,
		StartedAt: time.Now(), Holder: state.Holder{Host: "host-a"}, Steps: []state.Step{{Name: "one", Status: state.Running}, {Name: "two", Status: state.Pending}}}
	defer c.CoreV1().ConfigMaps("kube-system").Delete(context.Background(), Name(run.ID), metav1.DeleteOptions{})
	if err := recs.PutTail(ctx, run, &Tail{First: 0, Lines: []string{"start"}}); err != nil {
		t.Fatal(err)
	}
	type seen struct {
		status, one, two string
		tail             string
	}
	got := make(chan seen, 100)
	done := make(chan error, 1)
	go func() {
		done <- recs.Follow(ctx, run.ID, 50*time.Millisecond, time.Second, func(r *state.Run, tail *Tail) (bool, error) {
			s := seen{status: string(r.Status), one: string(r.Steps[0].Status), two: string(r.Steps[1].Status)}
			if tail != nil {
				s.tail = fmt.Sprint(tail.First, tail.Lines)
			}
			select {
			case got <- s:
			default:
			}
			return r.Status != state.Running, nil
		})
	}()
	next := func(want seen) {
		t.Helper()
		for {
			select {
			case s := <-got:
				if s == want {
					return
				}
			case <-ctx.Done():
				t.Fatalf("Follow never saw %+v", want)
			}
		}
	}
	next(seen{"running", "running", "pending", "0 [start]"})
	run.Steps[0].Status, run.Steps[1].Status = state.Done, state.Running
	if err := recs.PutTail(ctx, run, &Tail{First: 1, Lines: []string{"one done"}}); err != nil {
		t.Fatal(err)
	}
	next(seen{"running", "done", "running", "1 [one done]"})
	run.Steps[1].Status, run.Status = state.Done, state.Done
	if err := recs.Put(ctx, run); err != nil {
		t.Fatal(err)
	}
	next(seen{"done", "done", "done", ""})
	if err := <-done; err != nil {
		t.Errorf("Follow: %v", err)
	}

	// A record deleted while followed.
	run.Status = state.Running
	if err := recs.Put(ctx, run); err != nil {
		t.Fatal(err)
	}
	go func() {
		done <- recs.Follow(ctx, run.ID, time.Second, time.Second, func(*state.Run, *Tail) (bool, error) { return false, nil })
	}()
	time.Sleep(200 * time.Millisecond)
	if err := c.CoreV1().ConfigMaps("kube-system").Delete(ctx, Name(run.ID), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil || !strings.Contains(err.Error(), "was deleted") {
		t.Errorf("Follow of a deleted record: %v", err)
	}
	if err := recs.Follow(ctx, "20990101-000000-000000", time.Second, time.Second, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("Follow of an unknown run: %v", err)
	}
}
