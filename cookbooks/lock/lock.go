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
	// Claim, when not nil, lets the run share the lock with other runs of the same job
	// on other nodes (see Claim).
	Claim *Claim `json:"claim,omitempty"`
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
	// Why says why a lock held by a run with a Claim was not shared; Shared are the nodes
	// both runs claim.
	Why    string
	Shared []string
}

func (e *HeldError) Error() string {
	if e.Holder.RunID == "" {
		// A file lock busy for longer than a Holders probe, with no live holder recorded.
		return fmt.Sprintf("cluster %s is locked by a process that records no holder in its lock file", e.Cluster)
	}
	msg := fmt.Sprintf("cluster %s is locked by %s", e.Cluster, e.Holder)
	if e.Why != "" {
		msg += ": " + e.Why
	}
	if e.Lease != "" {
		msg += fmt.Sprintf("; lease %s last renewed %s (%s ago)", e.Lease, e.Renewed.Local().Format(time.DateTime), time.Since(e.Renewed).Round(time.Second))
	}
	return msg
}

// Files is a Locker using flock(2) on Dir/<cluster>.lock. The kernel releases a flock
// when its process dies, so a lock is never left behind by a killed run. A run without
// a Claim holds that file exclusively (its holder recorded in it); a run with a Claim
// holds it shared, and its holder record Dir/<cluster>.claims/<run> exclusively, after
// checking, under Dir/<cluster>.admit, that the live records' Claims are compatible.
type Files struct {
	Dir string
}

var _ Locker = (*Files)(nil)

type fileLock struct {
	f *os.File
	// claim is a shared holder's record (nil for an exclusive holder), admit the file
	// that orders admissions and releases.
	claim *os.File
	admit string
}

func (l *fileLock) Unlock() error {
	if l.claim == nil {
		// Empty the holder record first, so a reader never sees a stale holder.
		_ = l.f.Truncate(0)
		err := unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
		return errors.Join(err, l.f.Close())
	}
	a, err := lockAdmit(l.admit)
	if err == nil {
		defer a.Close()
	}
	err = errors.Join(os.Remove(l.claim.Name()), l.claim.Close())
	return errors.Join(err, l.f.Close())
}

// lockAdmit takes the exclusive flock of path (waited for: it is held only while a
// shared holder is admitted or released).
func lockAdmit(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func (fl *Files) path(cluster string) string { return filepath.Join(fl.Dir, cluster+".lock") }
func (fl *Files) claims(cluster string) string {
	return filepath.Join(fl.Dir, cluster+".claims")
}

// Lock implements Locker.
func (fl *Files) Lock(ctx context.Context, cluster string, h Holder) (Lock, *Holder, error) {
	if err := os.MkdirAll(fl.Dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("lock %s: %w", cluster, err)
	}
	if h.Claim != nil {
		return fl.lockShared(ctx, cluster, h)
	}
	path := fl.path(cluster)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("lock %s: %w", cluster, err)
	}
	if err := fl.take(ctx, f, cluster, unix.LOCK_EX, h); err != nil {
		return nil, nil, err
	}
	// We hold the lock. A holder still recorded in the file belongs to a process that
	// died without unlocking: taken over. So do the records of shared holders.
	prev := readHolder(f)
	if gone := fl.sweep(cluster); prev == nil && len(gone) > 0 {
		prev = &gone[0]
	}
	if err := writeHolder(f, h); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("lock %s: %w", cluster, err)
	}
	return &fileLock{f: f}, prev, nil
}

func writeHolder(f *os.File, h Holder) error {
	data, _ := json.Marshal(h)
	if err := f.Truncate(0); err != nil {
		return err
	}
	if _, err := f.WriteAt(append(data, '\n'), 0); err != nil {
		return err
	}
	return f.Sync()
}

// sweep removes the shared holders' records whose process is gone and returns them.
func (fl *Files) sweep(cluster string) []Holder {
	var gone []Holder
	fl.eachClaim(cluster, func(path string, h *Holder, live bool) {
		if !live {
			_ = os.Remove(path)
			if h != nil {
				gone = append(gone, *h)
			}
		}
	})
	return gone
}

// eachClaim calls f with every shared holder's record of cluster: its holder (nil if
// unreadable) and whether its process holds it.
func (fl *Files) eachClaim(cluster string, f func(path string, h *Holder, live bool)) {
	ents, _ := os.ReadDir(fl.claims(cluster))
	for _, e := range ents {
		path := filepath.Join(fl.claims(cluster), e.Name())
		cf, err := os.Open(path)
		if err != nil {
			continue
		}
		live := unix.Flock(int(cf.Fd()), unix.LOCK_SH|unix.LOCK_NB) != nil
		f(path, readHolder(cf), live)
		cf.Close()
	}
}

// lockShared takes the cluster's lock shared for h, whose Claim must be compatible with
// every live shared holder's.
func (fl *Files) lockShared(ctx context.Context, cluster string, h Holder) (Lock, *Holder, error) {
	fail := func(err error) (Lock, *Holder, error) { return nil, nil, fmt.Errorf("lock %s: %w", cluster, err) }
	admit := filepath.Join(fl.Dir, cluster+".admit")
	a, err := lockAdmit(admit)
	if err != nil {
		return fail(err)
	}
	defer a.Close()
	f, err := os.OpenFile(fl.path(cluster), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fail(err)
	}
	if err := fl.take(ctx, f, cluster, unix.LOCK_SH, h); err != nil {
		return nil, nil, err
	}
	// An exclusive holder still recorded died without unlocking: reported by this run,
	// and cleared below once it is admitted, so that the next chunks do not report it too.
	prev := readHolder(f)
	stale := prev != nil
	var held *HeldError
	fl.eachClaim(cluster, func(path string, o *Holder, live bool) {
		switch {
		case !live:
			_ = os.Remove(path)
			if prev == nil && o != nil {
				prev = o
			}
		case held == nil && o != nil:
			held = refusal(cluster, *o, h)
		}
	})
	if held != nil {
		f.Close()
		return nil, nil, held
	}
	if err := os.MkdirAll(fl.claims(cluster), 0o700); err != nil {
		f.Close()
		return fail(err)
	}
	cf, err := os.OpenFile(filepath.Join(fl.claims(cluster), claimFile(h)), os.O_RDWR|os.O_CREATE, 0o600)
	if err == nil {
		// A Holders probe of the fresh record holds its flock for an instant: tried again.
		for try := 1; ; try++ {
			err = unix.Flock(int(cf.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			if !errors.Is(err, syscall.EWOULDBLOCK) || try == busyTries {
				break
			}
			if err = wait(ctx, busyWait); err != nil {
				break
			}
		}
		if err == nil {
			err = writeHolder(cf, h)
		}
		if err != nil {
			cf.Close()
		}
	}
	if err != nil {
		f.Close()
		return fail(err)
	}
	if stale {
		// Shared by chunks only: no live exclusive holder can have written it.
		_ = f.Truncate(0)
	}
	return &fileLock{f: f, claim: cf, admit: admit}, prev, nil
}

// claimFile is the name of h's record: its run and process.
func claimFile(h Holder) string {
	return fmt.Sprintf("%s.%d", filepath.Base(h.RunID), h.PID)
}

// Holder returns who holds the cluster's lock now, or nil if nobody does; of a lock
// shared by chunks, the first (see Holders).
func (fl *Files) Holder(cluster string) *Holder {
	if all := fl.Holders(cluster); len(all) > 0 {
		return &all[0]
	}
	return nil
}

// Held returns a *HeldError if Lock would be refused to h now (a live holder that does
// not share the lock with it), without taking anything.
func (fl *Files) Held(cluster string, h Holder) error {
	if held := fl.held(cluster, h); held != nil {
		return held
	}
	return nil
}

func (fl *Files) held(cluster string, h Holder) *HeldError {
	for _, o := range fl.Holders(cluster) {
		if held := refusal(cluster, o, h); held != nil {
			return held
		}
	}
	return nil
}

// Holders returns every live holder of the cluster's lock: the exclusive one, or the
// shared ones.
func (fl *Files) Holders(cluster string) []Holder {
	var out []Holder
	if f, err := os.Open(fl.path(cluster)); err == nil {
		if unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB) != nil {
			// Held exclusively.
			if h := readHolder(f); h != nil {
				out = append(out, *h)
			}
			f.Close()
			return out
		}
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}
	fl.eachClaim(cluster, func(_ string, h *Holder, live bool) {
		if live && h != nil {
			out = append(out, *h)
		}
	})
	return out
}

// A lock found busy is tried again busyTries times, busyWait apart, while no live holder
// that refuses the run can be named: a Holders probe holds a flock for an instant, a
// holder is between its flock and its record for one; a real holder keeps it.
const (
	busyTries = 5
	busyWait  = 10 * time.Millisecond
)

// take takes f's flock (how: unix.LOCK_EX or unix.LOCK_SH) for h without waiting for a
// holder. A busy lock gives a *HeldError naming a live holder that refuses h, as Held
// does (the exclusive holder recorded in f, or a shared holder; never a stale record),
// or, when none can be named after busyTries tries, saying that no holder is recorded.
// f is closed on failure.
func (fl *Files) take(ctx context.Context, f *os.File, cluster string, how int, h Holder) error {
	for try := 1; ; try++ {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if errors.Is(err, syscall.EWOULDBLOCK) {
			if held := fl.held(cluster, h); held != nil {
				err = held
			} else if try == busyTries {
				err = &HeldError{Cluster: cluster}
			} else if err = wait(ctx, busyWait); err == nil {
				continue
			}
		}
		f.Close()
		var held *HeldError
		if errors.As(err, &held) {
			return held
		}
		return fmt.Errorf("lock %s: %w", cluster, err)
	}
}

// wait waits for d, or until ctx is done.
func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
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
