package cookbooks

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/cookbooks/state"
	"example.com/cookbook/openstack"
)

func TestReplaceBatches(t *testing.T) {
	olds := func(names ...string) []oldNode {
		var out []oldNode
		for _, n := range names {
			out = append(out, oldNode{Server: openstack.Server{Name: n}})
		}
		return out
	}
	tests := []struct {
		name   string
		surge  int
		canary bool
		want   [][]string
	}{
		{"one at a time", 1, false, [][]string{{"w-2"}, {"w-9"}, {"w-10"}}},
		{"two at a time", 2, false, [][]string{{"w-2", "w-9"}, {"w-10"}}},
		{"canary alone first", 2, true, [][]string{{"w-2"}, {"w-9", "w-10"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Oldest first, by number: w-10 after w-9.
			var sorted []oldNode
			for _, s := range sortedServers([]openstack.Server{{Name: "w-10"}, {Name: "w-2"}, {Name: "w-9"}}) {
				sorted = append(sorted, olds(s.Name)...)
			}
			var got [][]string
			for _, b := range replaceBatches(sorted, tt.surge, tt.canary) {
				var names []string
				for _, o := range b {
					names = append(names, o.Server.Name)
				}
				got = append(got, names)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("batches (-want +got):\n%s", diff)
			}
		})
	}
}

// TestReplaceProgress: the progress line counts an old node replaced once its audit line
// is sent (its done mark), in flight once its new node's name is picked, left otherwise.
func TestReplaceProgress(t *testing.T) {
	store := &state.Store{Dir: t.TempDir()}
	run := &state.Run{ID: "r-repl", Cookbook: "replace-k8s-nodes", StartedAt: time.Now()}
	v := (&pipeline.Runner{Store: store}).Values(run)
	p := replacePlan{Batches: [][]oldNode{
		{{Server: openstack.Server{Name: "w-1"}}, {Server: openstack.Server{Name: "w-2"}}},
		{{Server: openstack.Server{Name: "w-3"}}, {Server: openstack.Server{Name: "w-4"}}},
	}}
	log := &lines{}
	prog := replaceProgress(&Env{}, p, 4)
	prog.log = log
	if err := errors.Join(addKeysIn(newScope("w-1")).hostname.Set(v, "w-5"), nodeDone("w-1").Set(v, time.Now()),
		addKeysIn(newScope("w-2")).hostname.Set(v, "w-6"), nodeDone("w-2").Set(v, time.Now()),
		addKeysIn(newScope("w-3")).hostname.Set(v, "w-7")); err != nil {
		t.Fatal(err)
	}
	prog.summary(v)
	if len(log.got) != 1 || !strings.HasPrefix(log.got[0], "progress: 2/4 done, 1 in progress, 1 left, ETA ") {
		t.Errorf("progress lines %q, want one of 2/4 done, 1 in progress, 1 left with an ETA", log.got)
	}
}
