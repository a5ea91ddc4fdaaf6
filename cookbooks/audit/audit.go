// Package audit sends one line per action worth telling the team ("Added a new k8s
// worker X to the cluster") to the configured sinks: a command that reads the line on its
// standard input, and/or a file the line is appended to.
package audit

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Sink sends audit lines. A nil *Sink sends nothing (dry-runs).
type Sink struct {
	// Command receives each line on its standard input.
	Command []string
	// File gets each line appended, with a timestamp.
	File string
	// Log receives a warning when a sink fails; a failing sink never fails a run.
	Log *slog.Logger
	// Timeout bounds the command; zero means 30 seconds.
	Timeout time.Duration
	// Suffix is appended to every line: the task the run is for (" (T123456)").
	Suffix string
}

// Send sends line to every sink. Failures are logged as warnings and returned joined, for
// callers that want them; cookbooks ignore them.
func (s *Sink) Send(ctx context.Context, line string) {
	s.send(ctx, line, slog.LevelInfo)
}

// Bookend sends a run's START or END line: to the sinks like Send, but shown on the
// terminal only with --verbose (the run's own start and end lines say the same there).
func (s *Sink) Bookend(ctx context.Context, line string) {
	s.send(ctx, line, slog.LevelDebug)
}

func (s *Sink) send(ctx context.Context, line string, level slog.Level) {
	if s == nil {
		return
	}
	line = strings.TrimSpace(line) + s.Suffix
	if s.Log != nil {
		s.Log.Log(ctx, level, "audit: "+line)
	}
	if len(s.Command) > 0 {
		if err := s.runCommand(ctx, line); err != nil {
			s.warn(err)
		}
	}
	if s.File != "" {
		if err := s.appendFile(line); err != nil {
			s.warn(err)
		}
	}
}

func (s *Sink) warn(err error) {
	if s.Log != nil {
		s.Log.Warn("audit sink failed; the run goes on", "err", err)
	}
}

func (s *Sink) runCommand(ctx context.Context, line string) error {
	timeout := s.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.Command[0], s.Command[1:]...)
	cmd.Stdin = strings.NewReader(line + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("audit command %s: %w: %s", s.Command[0], err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (s *Sink) appendFile(line string) error {
	f, err := os.OpenFile(s.File, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("audit file: %w", err)
	}
	_, err = fmt.Fprintf(f, "%s %s\n", time.Now().UTC().Format(time.RFC3339), line)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("audit file: %w", err)
	}
	return nil
}
