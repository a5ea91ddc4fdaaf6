package cookbooks

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func names(bs [][]rollNode) [][]string {
	var out [][]string
	for _, b := range bs {
		var row []string
		for _, n := range b {
			row = append(row, n.Name)
		}
		out = append(out, row)
	}
	return out
}

func TestBatches(t *testing.T) {
	w := func(n string) rollNode { return rollNode{Name: "w-" + n, Role: "worker"} }
	nfs := func(n string) rollNode { return rollNode{Name: "nfs-" + n, Role: "worker-nfs"} }
	cp := func(n string) rollNode { return rollNode{Name: "c-" + n, Role: "control", Control: true} }
	cordoned := func(r rollNode) rollNode { r.Cordoned = true; return r }
	tests := []struct {
		name    string
		nodes   []rollNode
		max     int
		already []string
		want    [][]string
		wantErr string
	}{
		{name: "one at a time, numeric order, control last", max: 1,
			nodes: []rollNode{cp("1"), w("10"), w("2"), nfs("1")},
			want:  [][]string{{"w-2"}, {"w-10"}, {"nfs-1"}, {"c-1"}}},
		{name: "two at a time within a role", max: 2,
			nodes: []rollNode{w("1"), w("2"), w("3"), nfs("1"), nfs("2"), cp("1"), cp("2")},
			want:  [][]string{{"w-1", "w-2"}, {"w-3"}, {"nfs-1", "nfs-2"}, {"c-1"}, {"c-2"}}},
		{name: "an admin-cordoned node outside the job takes a slot", max: 2, already: []string{"w-9"},
			nodes: []rollNode{w("1"), w("2")},
			want:  [][]string{{"w-1"}, {"w-2"}}},
		{name: "an admin-cordoned node inside the job holds its slot for the whole run", max: 3,
			nodes: []rollNode{w("1"), cordoned(w("2")), w("3"), w("4")},
			want:  [][]string{{"w-1", "w-2", "w-3"}, {"w-4"}}},
		{name: "no room left", max: 1, already: []string{"w-9"},
			nodes:   []rollNode{w("1")},
			wantErr: "1 node(s) are already unschedulable (w-9): --max-unavailable 1 leaves no room"},
		{name: "zero", max: 0, nodes: []rollNode{w("1")}, wantErr: "--max-unavailable: 0 is not a positive number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := batches(tt.nodes, tt.max, tt.already)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, names(got)); diff != "" {
				t.Errorf("batches (-want +got):\n%s", diff)
			}
		})
	}
}
