package lab

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// TestAlertmanagerLeavesNothing: a started Alertmanager answers its API and amtool; Stop
// leaves no process, no open port and no directory.
func TestAlertmanagerLeavesNothing(t *testing.T) {
	am := NeedAlertmanager(t)
	out, err := am.Amtool(context.Background(), "silence", "query", "-q")
	if err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("amtool silence query = %q, %v; want no silences", out, err)
	}
	stopLeavesNothing(t, am.Pid(), am.Dir, am.URL, am.Stop)
	if err := am.Stop(); err != nil {
		t.Errorf("second Stop = %v", err)
	}
}

// TestAlertmanagerSweep: a dir whose owner is gone is removed, with what runs from it,
// by the next start.
func TestAlertmanagerSweep(t *testing.T) {
	if _, ok := AlertmanagerBinary(); !ok {
		t.Skip("no alertmanager")
	}
	dir, err := os.MkdirTemp("", amPrefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// An owner that is not alive: pid 1 with a start time that is not its own.
	if err := os.WriteFile(dir+"/"+ownerFile, []byte("1 not-its-start\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	am := NeedAlertmanager(t)
	_ = am
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s of a dead owner was not swept: %v", dir, err)
	}
}

// stopLeavesNothing checks that the daemon (its pid, its dir, its URL) runs, that stop
// stops it, and that neither its process, its dir nor its port is left.
func stopLeavesNothing(t *testing.T, pid int, dir, url string, stop func() error) {
	t.Helper()
	addr := strings.TrimPrefix(url, "http://")
	if !ours(pid, dir) {
		t.Fatalf("pid %d does not run with %s on its command line", pid, dir)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if ours(pid, dir) {
		t.Errorf("pid %d still runs after Stop", pid)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there after Stop: %v", dir, err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("%s still accepts connections after Stop", addr)
	}
}
