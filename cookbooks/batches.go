package cookbooks

import (
	"sort"
	"strconv"
	"strings"
)

// rollNode is a node a rolling job handles.
type rollNode struct {
	Name string `json:"name"`
	Role string `json:"role"`
	// Control is set for control-plane nodes: they go last, one at a time.
	Control bool `json:"control,omitempty"`
	// Cordoned is set when an administrator had cordoned the node before the run.
	Cordoned bool `json:"cordoned,omitempty"`
}

// batches splits nodes into the batches of a rolling job: at most maxUnavailable nodes of
// the same role at a time, control-plane nodes last and one at a time, and never more than
// maxUnavailable nodes unschedulable at once, counting nodes an administrator cordoned
// (those outside the job, given as alreadyUnschedulable, and those inside it, which stay
// cordoned for the whole run).
func batches(nodes []rollNode, maxUnavailable int, alreadyUnschedulable []string) ([][]rollNode, error) {
	if maxUnavailable < 1 {
		return nil, BadInputf("--max-unavailable: %d is not a positive number", maxUnavailable)
	}
	sorted := append([]rollNode(nil), nodes...)
	sort.SliceStable(sorted, func(i, j int) bool {
		a, b := sorted[i], sorted[j]
		if a.Control != b.Control {
			return !a.Control
		}
		if a.Role != b.Role {
			return a.Role < b.Role
		}
		return lessByNumber(a.Name, b.Name)
	})
	held := append([]string(nil), alreadyUnschedulable...)
	for _, n := range sorted {
		if n.Cordoned {
			held = append(held, n.Name)
		}
	}
	// A node cordoned by an administrator holds one slot for the whole run; while it is
	// itself rebooted it is already counted.
	room := maxUnavailable - len(held)
	if room < 1 {
		return nil, BadInputf("%d node(s) are already unschedulable (%s): --max-unavailable %d leaves no room to take another down; raise --max-unavailable or uncordon them first",
			len(held), strings.Join(held, ", "), maxUnavailable)
	}
	var out [][]rollNode
	var cur []rollNode
	flush := func() {
		if len(cur) > 0 {
			out = append(out, cur)
			cur = nil
		}
	}
	for _, n := range sorted {
		size := room
		if n.Control {
			size = 1
		}
		// A cordoned node occupies its slot already; it does not take another.
		if len(cur) > 0 && (cur[0].Role != n.Role || countNew(cur) >= size && !n.Cordoned) {
			flush()
		}
		cur = append(cur, n)
		if n.Control {
			flush()
		}
	}
	flush()
	return out, nil
}

// countNew counts the nodes of a batch that the run itself takes down.
func countNew(b []rollNode) int {
	n := 0
	for _, x := range b {
		if !x.Cordoned {
			n++
		}
	}
	return n
}

// lessByNumber orders node names by their trailing number (worker-2 before worker-10).
func lessByNumber(a, b string) bool {
	pa, na := splitNumber(a)
	pb, nb := splitNumber(b)
	if pa != pb {
		return pa < pb
	}
	return na < nb
}

func splitNumber(s string) (string, int) {
	i := strings.LastIndex(s, "-")
	if i < 0 {
		return s, 0
	}
	n, err := strconv.Atoi(s[i+1:])
	if err != nil {
		return s, 0
	}
	return s[:i], n
}

func batchNames(b []rollNode) string {
	names := make([]string, len(b))
	for i, n := range b {
		names[i] = n.Name
	}
	return strings.Join(names, ", ")
}
