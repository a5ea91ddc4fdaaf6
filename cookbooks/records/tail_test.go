package records

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTailer: the tail is the last TailLines complete lines with the number of the
// first; a line not ended yet waits for its end; a long line is cut.
func TestTailer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run.log")
	tl := &Tailer{Path: path}
	if tail, err := tl.Tail(); err != nil || tail.First != 0 || len(tail.Lines) != 0 {
		t.Fatalf("tail of no log = %+v, %v", tail, err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprint(f, "one\ntwo\nthr")
	tail, err := tl.Tail()
	if err != nil || tail.First != 0 || strings.Join(tail.Lines, ",") != "one,two" {
		t.Fatalf("tail = %+v, %v; want one,two from 0", tail, err)
	}
	fmt.Fprint(f, "ee\n")
	for i := 4; i <= TailLines+10; i++ {
		fmt.Fprintf(f, "line %d\n", i)
	}
	fmt.Fprint(f, strings.Repeat("x", 2*TailLineBytes)+"\n")
	tail, err = tl.Tail()
	if err != nil {
		t.Fatal(err)
	}
	n := TailLines + 11 // lines written
	if tail.First != n-TailLines || len(tail.Lines) != TailLines {
		t.Fatalf("tail from %d with %d lines, want from %d with %d", tail.First, len(tail.Lines), n-TailLines, TailLines)
	}
	if want := fmt.Sprintf("line %d", n-TailLines+1); tail.Lines[0] != want {
		t.Errorf("first line %q, want %q", tail.Lines[0], want)
	}
	if last := tail.Lines[TailLines-1]; len(last) > TailLineBytes+len("…") || !strings.HasSuffix(last, "…") {
		t.Errorf("long line kept as %d bytes", len(last))
	}
}
