// Command cookbook runs the jobs ("cookbooks") that operators of Kubernetes clusters on
// OpenStack use to add, remove, drain and reboot nodes. Run `cookbook --help`.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"example.com/cookbook/cookbooks"
	"example.com/cookbook/cookbooks/lock"
	"example.com/cookbook/cookbooks/pipeline"
)

// Exit codes.
const (
	exitOK          = 0
	exitFailed      = 1
	exitBadInput    = 2
	exitLocked      = 3
	exitInterrupted = 130
)

func main() {
	os.Exit(realMain(os.Args, os.Stdin, os.Stderr, cookbooks.All()))
}

// realMain runs the command line args with the given cookbooks and returns the exit code.
func realMain(args []string, stdin io.Reader, stderr io.Writer, books []cookbooks.Cookbook) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 4)
	// SIGHUP: the operator's terminal or ssh session went away; the run stops as if
	// interrupted, saved and resumable, rather than dying inside a step.
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	// A terminal or pipe that is gone must not end a long run: writes to it fail and the
	// run goes on (its log file has every line).
	signal.Ignore(syscall.SIGPIPE)
	go stopOnSignal(sigs, stderr, cancel, func() { os.Exit(exitInterrupted) })

	app := newApp(books, stdin, stderr)
	err := app.RunContext(ctx, args)
	return report(stderr, err)
}

// stopOnSignal cancels the run at the first signal, so that the current step is cancelled
// and the state saved. A closed tmux window or ssh session delivers SIGHUP more than once
// (the terminal's hangup, then the shell forwarding it) and a SIGTERM may follow: those
// are the same request to stop cleanly. Only a second SIGINT, an operator pressing Ctrl-C
// again, exits at once.
func stopOnSignal(sigs <-chan os.Signal, stderr io.Writer, cancel func(), exitNow func()) {
	sig, ok := <-sigs
	if !ok {
		return
	}
	fmt.Fprintf(stderr, "cookbook: %s: stopping the current step and saving the state (press Ctrl-C again to exit at once)\n", sig)
	cancel()
	for sig := range sigs {
		if sig == os.Interrupt {
			fmt.Fprintln(stderr, "cookbook: second interrupt: exiting now")
			exitNow()
			return
		}
	}
}

// report prints err on one line and returns the exit code it stands for.
func report(stderr io.Writer, err error) int {
	code := exitCode(err)
	if err == nil {
		return code
	}
	var shown *shownError
	if errors.As(err, &shown) {
		return code
	}
	fmt.Fprintf(stderr, "cookbook: error: %v\n", err)
	return code
}

// exitCode returns the exit code err stands for.
func exitCode(err error) int {
	var held *lock.HeldError
	var in *cookbooks.InputError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &held):
		return exitLocked
	case errors.Is(err, pipeline.ErrInterrupted):
		return exitInterrupted
	case errors.As(err, &in):
		return exitBadInput
	}
	return exitFailed
}

// shownError is an error whose message was already printed in full.
type shownError struct{ err error }

func (e *shownError) Error() string { return e.err.Error() }
func (e *shownError) Unwrap() error { return e.err }
