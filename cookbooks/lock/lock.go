// Package lock gives a run exclusive use of a cluster for its whole life.
package lock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Holder says who holds a lock.
type Holder struct {
	RunID     string    `json:"runId"`
	Cookbook  string    `json:"cookbook"`
	User      string    `json:"user"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	StartedAt time.Time `json:"startedAt"`
}

func (h Holder) String() string {
	return fmt.Sprintf("run %s (%s) by %s on %s, pid %d, started %s",
		h.RunID, h.Cookbook, h.User, h.Host, h.PID, h.StartedAt.Local().Format(time.DateTime))
}

// Locker takes per-cluster locks. Files works on one operator host; Leases, a Lease in
// the cluster, across every operator host.
type Locker interface {
	// Lock takes the cluster's lock or returns a *HeldError. previous, when not nil,
	// is a holder whose process is gone and whose lock was taken over.
	Lock(ctx context.Context, cluster string, h Holder) (l Lock, previous *Holder, err error)
}

// Lock is a held lock.
type Lock interface {
	Unlock() error
}

// HeldError says the lock is held by another live run.
type HeldError struct {
	Cluster string
	Holder  Holder
	// Lease is the Lease (namespace/name) of a lease lock, and Renewed its last renewal.
	Lease   string
	Renewed time.Time
}

func (e *HeldError) Error() string {
	msg := fmt.Sprintf("cluster %s is locked by %s", e.Cluster, e.Holder)
	if e.Lease != "" {
		msg += fmt.Sprintf("; lease %s last renewed %s (%s ago)", e.Lease, e.Renewed.Local().Format(time.DateTime), time.Since(e.Renewed).Round(time.Second))
	}
	return msg
}

// Files is a Locker using flock(2) on Dir/<cluster>.lock. The kernel releases a flock
// when its process dies, so a lock is never left behind by a killed run.
type Files struct {
	Dir string
}

var _ Locker = (*Files)(nil)

type fileLock struct{ f *os.File }

func (l *fileLock) Unlock() error {
	// Empty the holder record first, so a reader never sees a stale holder.
	_ = l.f.Truncate(0)
	err := unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	return errors.Join(err, l.f.Close())
}

// Lock implements Locker.
func (fl *Files) Lock(_ context.Context, cluster string, h Holder) (Lock, *Holder, error) {
	if err := os.MkdirAll(fl.Dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("lock %s: %w", cluster, err)
	}
	path := filepath.Join(fl.Dir, cluster+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("lock %s: %w", cluster, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		prev := readHolder(f)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			held := &HeldError{Cluster: cluster}
			if prev != nil {
				held.Holder = *prev
			}
			return nil, nil, held
		}
		return nil, nil, fmt.Errorf("lock %s: %w", cluster, err)
	}
	// We hold the lock. A holder still recorded in the file belongs to a process that
	// died without unlocking: taken over.
	prev := readHolder(f)
	data, _ := json.Marshal(h)
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt(append(data, '\n'), 0)
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("lock %s: %w", cluster, err)
		}
	}
	return &fileLock{f: f}, prev, nil
}

// Holder returns who holds the cluster's lock now, or nil if nobody does.
func (fl *Files) Holder(cluster string) *Holder {
	f, err := os.Open(filepath.Join(fl.Dir, cluster+".lock"))
	if err != nil {
		return nil
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err == nil {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		return nil
	}
	return readHolder(f)
}

func readHolder(f *os.File) *Holder {
	buf := make([]byte, 4096)
	n, _ := f.ReadAt(buf, 0)
	if n == 0 {
		return nil
	}
	var h Holder
	if err := json.Unmarshal(buf[:n], &h); err != nil {
		return nil
	}
	return &h
}
