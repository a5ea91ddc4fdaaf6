package pipeline

import (
	"fmt"
	"time"
)

// Progress summarises a rolling job for an operator watching a tmux window: how many
// units (nodes) are done, in progress and left, and an ETA from the pace so far.
type Progress struct {
	Total      int
	Done       int
	InProgress int
	// Elapsed is the time spent on the units done so far (not counting earlier runs'
	// pauses).
	Elapsed time.Duration
}

// ETA estimates the time left from the mean time per unit done; zero when nothing is
// done yet.
func (p Progress) ETA() time.Duration {
	if p.Done == 0 {
		return 0
	}
	left := p.Total - p.Done
	return time.Duration(int64(p.Elapsed) / int64(p.Done) * int64(left))
}

func (p Progress) String() string {
	left := p.Total - p.Done - p.InProgress
	s := fmt.Sprintf("%d/%d done, %d in progress, %d left", p.Done, p.Total, p.InProgress, left)
	if eta := p.ETA(); eta > 0 {
		s += fmt.Sprintf(", ETA %s", eta.Round(time.Second))
	} else if p.Done < p.Total {
		s += ", ETA unknown until the first node is done"
	}
	return s
}
