package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"example.com/cookbook/cookbooks/pipeline"
)

// terminal asks the operator questions on an interactive terminal.
type terminal struct {
	in  *bufio.Reader
	out io.Writer
}

// newTerminal returns a terminal, or nil when stdin is not one (runs then never ask).
func newTerminal(stdin io.Reader, out io.Writer) *terminal {
	f, ok := stdin.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return &terminal{in: bufio.NewReader(stdin), out: out}
}

func (t *terminal) ask(question string) string {
	fmt.Fprint(t.out, question)
	line, _ := t.in.ReadString('\n')
	return strings.ToLower(strings.TrimSpace(line))
}

// Confirm asks a yes/no question; anything but yes is no.
func (t *terminal) Confirm(question string) bool {
	a := t.ask(question + " [y/N] ")
	return a == "y" || a == "yes"
}

// AfterFailure implements pipeline.Prompter.
func (t *terminal) AfterFailure(ctx context.Context, step string, err error) pipeline.Choice {
	what := err.Error()
	if !strings.Contains(what, step) {
		what = fmt.Sprintf("step %s: %s", step, what)
	}
	for ctx.Err() == nil {
		switch t.ask(fmt.Sprintf("FAILED %s\n[r]etry, [s]kip this step, or [a]bort (resumable)? ", what)) {
		case "r", "retry":
			return pipeline.Retry
		case "s", "skip":
			return pipeline.SkipStep
		case "a", "abort", "":
			return pipeline.Abort
		}
	}
	return pipeline.Abort
}
