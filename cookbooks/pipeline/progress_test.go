package pipeline

import (
	"testing"
	"time"
)

func TestProgress(t *testing.T) {
	tests := []struct {
		name string
		p    Progress
		want string
	}{
		{"start", Progress{Total: 12, InProgress: 2}, "0/12 done, 2 in progress, 10 left, ETA unknown until the first node is done"},
		{"pace", Progress{Total: 12, Done: 3, InProgress: 2, Elapsed: 9 * time.Minute}, "3/12 done, 2 in progress, 7 left, ETA 27m0s"},
		{"end", Progress{Total: 2, Done: 2, Elapsed: time.Minute}, "2/2 done, 0 in progress, 0 left"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.p.String(); got != tt.want {
				t.Errorf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}
