package records

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// Tailer keeps the end of a run's growing log file for PutTail: each call reads only
// what was appended since the last one, so the cost of a save does not grow with the
// log. A line not ended yet is read once it is.
type Tailer struct {
	Path string

	offset int64
	lines  int
	last   []string
}

// Tail returns the last TailLines complete lines of the log (each cut to
// TailLineBytes), with the number of the first. A log not written yet is an empty tail.
func (t *Tailer) Tail() (*Tail, error) {
	f, err := os.Open(t.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return &Tail{First: t.lines - len(t.last), Lines: append([]string(nil), t.last...)}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("log tail: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() < t.offset {
		t.offset, t.lines, t.last = 0, 0, nil // rewritten: read it again
	}
	if _, err := f.Seek(t.offset, io.SeekStart); err != nil {
		return nil, fmt.Errorf("log tail: %w", err)
	}
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			break // EOF, with a line not ended yet left for the next call
		}
		t.offset += int64(len(line))
		t.lines++
		line = strings.TrimRight(line, "\n")
		if len(line) > TailLineBytes {
			line = strings.ToValidUTF8(line[:TailLineBytes], "") + "…"
		}
		t.last = append(t.last, line)
		if len(t.last) > TailLines {
			t.last = t.last[len(t.last)-TailLines:]
		}
	}
	return &Tail{First: t.lines - len(t.last), Lines: append([]string(nil), t.last...)}, nil
}
