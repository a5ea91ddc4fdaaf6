package lab

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

// RunTests is a TestMain helper: it starts one control plane for the test package if the
// lab binaries are there, runs the tests, and stops it. Tests call Need first.
//
//	var cp *lab.ControlPlane
//	func TestMain(m *testing.M) { os.Exit(lab.RunTests(m, &cp)) }
func RunTests(m *testing.M, cp **ControlPlane) int {
	dir, ok := BinDir()
	if !ok {
		what := "are skipped"
		if os.Getenv("CI") == "true" {
			what = "fail (CI=true)"
		}
		fmt.Fprintf(os.Stderr, "lab: binaries missing in %s (run `make lab-bins`): the tests that need the lab control plane %s\n", dir, what)
		return m.Run()
	}
	var c *ControlPlane
	var err error
	// A busy machine can make a start fail; a second try starts afresh.
	for try := 1; try <= 2; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		c, err = StartControlPlane(ctx, Options{Name: fmt.Sprintf("test-%d", os.Getpid()), BinDir: dir})
		cancel()
		if err == nil {
			break
		}
		fmt.Fprintf(os.Stderr, "lab: control plane did not start (try %d): %v\n", try, err)
	}
	if err != nil {
		return 1
	}
	*cp = c
	code := m.Run()
	if err := c.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "lab: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Need skips the test when no control plane runs (the lab binaries are missing), or fails
// it under CI=true, where they must be there.
func Need(t testing.TB, cp *ControlPlane) {
	t.Helper()
	if cp != nil {
		return
	}
	dir, ok := BinDir()
	msg := fmt.Sprintf("lab binaries missing in %s: run `make lab-bins` to run this test against a real kube-apiserver", dir)
	if ok {
		msg = "no lab control plane: the test package's TestMain must call lab.RunTests"
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
