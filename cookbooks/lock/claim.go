package lock

import (
	"fmt"
	"sort"
	"strings"
)

// Claim is what a run that may share its cluster's lock holds of the cluster: the nodes
// of one chunk of a job. Two runs hold the lock together only when both have a Claim,
// their Jobs are equal and their Nodes disjoint (chunks of one upgrade run from several
// terminals); a run without a Claim holds the lock alone.
type Claim struct {
	// Job names the work and its target, e.g. "upgrade-k8s-cluster of workers to
	// v1.37.1": only runs of the same Job share.
	Job string `json:"job"`
	// Nodes are the nodes the run takes down, sorted.
	Nodes []string `json:"nodes"`
}

// NewClaim returns the claim of job on nodes (sorted, without repeats).
func NewClaim(job string, nodes []string) *Claim {
	seen := map[string]bool{}
	var out []string
	for _, n := range nodes {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return &Claim{Job: job, Nodes: out}
}

// Shares reports whether runs claiming c and o share a cluster's lock: both claims,
// of the same job, on disjoint nodes.
func (c *Claim) Shares(o *Claim) bool {
	if c == nil || o == nil {
		return false
	}
	why, _ := conflict(Holder{RunID: "a", Claim: c}, Holder{RunID: "b", Claim: o})
	return why == ""
}

// conflict says why a run holding h refuses a run wanting w to hold the lock with it:
// "" when they share it. shared are the nodes both claim.
func conflict(h, w Holder) (why string, shared []string) {
	switch {
	case h.RunID == w.RunID:
		return "it is the same run", nil
	case h.Claim == nil:
		return "", nil // the caller reports the exclusive holder
	case w.Claim == nil:
		return fmt.Sprintf("it holds nodes %s for %s; a run that is not a chunk of it waits for it", strings.Join(h.Claim.Nodes, ", "), h.Claim.Job), nil
	case h.Claim.Job != w.Claim.Job:
		return fmt.Sprintf("it runs %s, not %s: only chunks of the same job share a cluster", h.Claim.Job, w.Claim.Job), nil
	}
	in := map[string]bool{}
	for _, n := range h.Claim.Nodes {
		in[n] = true
	}
	for _, n := range w.Claim.Nodes {
		if in[n] {
			shared = append(shared, n)
		}
	}
	if len(shared) > 0 {
		return fmt.Sprintf("it holds node(s) %s that this run would take too", strings.Join(shared, ", ")), shared
	}
	return "", nil
}

// refusal returns the HeldError of a run wanting w against the live holder h, or nil when
// they share the lock.
func refusal(cluster string, h, w Holder) *HeldError {
	if h.Claim == nil {
		return &HeldError{Cluster: cluster, Holder: h}
	}
	why, shared := conflict(h, w)
	if why == "" {
		return nil
	}
	return &HeldError{Cluster: cluster, Holder: h, Why: why, Shared: shared}
}
