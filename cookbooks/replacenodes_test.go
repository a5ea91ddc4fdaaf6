package cookbooks

import (
	"testing"

	"github.com/google/go-cmp/cmp"

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
