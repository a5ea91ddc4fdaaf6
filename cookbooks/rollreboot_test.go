package cookbooks

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"example.com/cookbook/cookbooks/pipeline"
	"example.com/cookbook/cookbooks/state"
)

// lines is a progress log that keeps its lines.
type lines struct {
	mu  sync.Mutex
	got []string
}

func (l *lines) Info(msg string, _ ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, msg)
}

// TestRollProgressWhileBatchRecords runs a batch of three nodes whose goroutines record
// their done marks (each Set saves the run to a real store) while the progress ticker,
// started with the plan's values, summarises them. Run with -race: the ticker and the
// saves must read the map only under the run's one lock.
func TestRollProgressWhileBatchRecords(t *testing.T) {
	store := &state.Store{Dir: t.TempDir()}
	run := &state.Run{ID: "r-roll", Cookbook: "roll-reboot", StartedAt: time.Now()}
	runner := &pipeline.Runner{Store: store}
	batch := []rollNode{{Name: "w-1", Role: "worker"}, {Name: "w-2", Role: "worker"}, {Name: "w-3", Role: "worker"}}

	// What roller.plan does: record the plan, start the ticker with the plan's values.
	v := runner.Values(run)
	if err := keyRollPlan.Set(v, [][]rollNode{batch}); err != nil {
		t.Fatal(err)
	}
	log := &lines{}
	p := &rollProgress{log: log, total: len(batch), started: time.Now(), every: time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	ticked := make(chan struct{})
	go func() { defer close(ticked); p.tick(ctx, v) }()

	const rounds = 30
	steps := []pipeline.Step{{Name: "batch-1", Do: func(ctx context.Context, v *pipeline.Values) error {
		p.begin(len(batch))
		return each(batch, func(n rollNode) error {
			for i := range rounds {
				if err := pipeline.Key[int](n.Name+"/round").Set(v, i); err != nil {
					return err
				}
				p.summary(v) // as the health gate does after a batch
			}
			if err := nodeDone(n.Name).Set(v, time.Now()); err != nil {
				return err
			}
			p.finish(n.Name)
			return nil
		})
	}}}
	err := runner.Run(ctx, run, steps)
	cancel()
	<-ticked
	if err != nil {
		t.Fatal(err)
	}

	if got, want := p.snapshot(v, [][]rollNode{batch}).String(), "3/3 done, 0 in progress, 0 left"; got != want {
		t.Errorf("progress = %q, want %q", got, want)
	}
	saved, err := store.Load(run.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range batch {
		if got := string(saved.Values[n.Name+"/round"]); got != fmt.Sprint(rounds-1) {
			t.Errorf("saved %s/round = %s, want %d", n.Name, got, rounds-1)
		}
		if _, ok := saved.Values[n.Name+"/done"]; !ok {
			t.Errorf("%s/done was not saved", n.Name)
		}
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	summaries := 0
	for _, l := range log.got {
		if strings.HasPrefix(l, "progress: ") {
			summaries++
		}
	}
	if summaries < len(batch)*rounds {
		t.Errorf("%d progress summaries, want at least %d", summaries, len(batch)*rounds)
	}
}
