package lock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"golang.org/x/sys/unix"
)

// HolderAnnotation is the Lease annotation that records its holder as JSON (a Holder).
const HolderAnnotation = "cookbook.toolforge.org/holder"

// Leases is a Locker holding a coordination.k8s.io/v1 Lease in the cluster, so that runs
// from every operator host exclude each other. It is taken and renewed with optimistic
// concurrency (an Update carrying the resourceVersion it read), as client-go's
// leaderelection does. A Lease not renewed for its duration is taken over; so is, at
// once, one whose holder ran on this host (Host) in a process that is gone.
type Leases struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string
	// Duration is how long a Lease not renewed stays held (default 60s); RenewEvery is
	// how often the holder renews it (default 5s).
	Duration   time.Duration
	RenewEvery time.Duration
	// Host is this operator host's name, as the holders record it.
	Host string
	// Alive reports whether a process of this host runs; nil uses kill(pid, 0).
	Alive func(pid int) bool
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

var _ Locker = (*Leases)(nil)

func (ls *Leases) now() time.Time {
	if ls.Now != nil {
		return ls.Now()
	}
	return time.Now()
}

func (ls *Leases) duration() time.Duration {
	if ls.Duration > 0 {
		return ls.Duration
	}
	return 60 * time.Second
}

func (ls *Leases) renewEvery() time.Duration {
	if ls.RenewEvery > 0 {
		return ls.RenewEvery
	}
	return 5 * time.Second
}

func (ls *Leases) alive(pid int) bool {
	if ls.Alive != nil {
		return ls.Alive(pid)
	}
	return pid > 0 && unix.Kill(pid, 0) != unix.ESRCH
}

func (ls *Leases) where() string { return ls.Namespace + "/" + ls.Name }

// identity is the Lease's spec.holderIdentity for h: unique per process and run.
func identity(h Holder) string {
	return fmt.Sprintf("%s %s@%s pid %d", h.RunID, h.User, h.Host, h.PID)
}

// LeaseHolder returns who holds the Lease l and when it was last renewed; nil when
// nobody does (never taken or released).
func LeaseHolder(l *coordinationv1.Lease) (*Holder, time.Time) {
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
		return nil, time.Time{}
	}
	h := Holder{RunID: *l.Spec.HolderIdentity}
	if data, ok := l.Annotations[HolderAnnotation]; ok {
		_ = json.Unmarshal([]byte(data), &h)
	}
	var renewed time.Time
	if l.Spec.RenewTime != nil {
		renewed = l.Spec.RenewTime.Time
	} else if l.Spec.AcquireTime != nil {
		renewed = l.Spec.AcquireTime.Time
	}
	return &h, renewed
}

// expired reports whether a Lease last renewed at renewed has expired at now.
func expired(l *coordinationv1.Lease, renewed, now time.Time) bool {
	d := time.Duration(ptr.Deref(l.Spec.LeaseDurationSeconds, 0)) * time.Second
	return !now.Before(renewed.Add(d))
}

// HoldersAnnotation is the Lease annotation that records every holder of a Lease shared
// by runs with compatible Claims, as a JSON list of LeaseEntry; the first is also in
// spec.holderIdentity and HolderAnnotation, and spec.renewTime is the latest renewal, so
// that a reader that knows only one holder (kubectl, an older cookbook) still sees the
// Lease held.
const HoldersAnnotation = "cookbook.toolforge.org/holders"

// LeaseEntry is one holder of a Lease and its last renewal.
type LeaseEntry struct {
	ID      string    `json:"id"`
	Holder  Holder    `json:"holder"`
	Renewed time.Time `json:"renewed"`
}

// LeaseEntries returns every holder of the Lease l, first the one spec.holderIdentity
// names; none when nobody holds it. A holders annotation that does not agree with
// spec.holderIdentity (the Lease changed by something that knows only one holder) is
// ignored.
func LeaseEntries(l *coordinationv1.Lease) []LeaseEntry {
	h, renewed := LeaseHolder(l)
	if h == nil {
		return nil
	}
	id := *l.Spec.HolderIdentity
	var all []LeaseEntry
	if data, ok := l.Annotations[HoldersAnnotation]; ok && json.Unmarshal([]byte(data), &all) == nil && len(all) > 0 && all[0].ID == id {
		return all
	}
	return []LeaseEntry{{ID: id, Holder: *h, Renewed: renewed}}
}

// Holder returns who holds the Lease now, when it was last renewed, and whether that
// renewal is still in force; nil when nobody holds it. Of a shared Lease, the first
// holder (see Holders).
func (ls *Leases) Holder(ctx context.Context) (*Holder, time.Time, bool, error) {
	all, err := ls.Holders(ctx)
	if err != nil || len(all) == 0 {
		return nil, time.Time{}, false, err
	}
	return &all[0].Holder, all[0].Renewed, all[0].Live, nil
}

// LiveEntry is a holder of the Lease and whether it still holds it: its renewal is in
// force and, for a holder of this host (Leases.Host), its process is there.
type LiveEntry struct {
	LeaseEntry
	Live bool
}

// Holders returns every holder of the Lease (one unless runs with Claims share it).
func (ls *Leases) Holders(ctx context.Context) ([]LiveEntry, error) {
	l, err := ls.Client.CoordinationV1().Leases(ls.Namespace).Get(ctx, ls.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lease %s: %w", ls.where(), err)
	}
	now := ls.now()
	var out []LiveEntry
	for _, e := range LeaseEntries(l) {
		out = append(out, LiveEntry{LeaseEntry: e, Live: ls.live(l, &e.Holder, e.Renewed, now)})
	}
	return out, nil
}

// Lock implements Locker: it takes the Lease, or returns a *HeldError naming its live
// holder. previous, when not nil, is a holder whose hold was taken over (expired, or
// held by a process of this host that is gone). A holder with a Claim shares the Lease
// with the live holders whose Claims it is compatible with (see Claim), each recorded
// and renewed in its own entry. The returned lock renews its entry until Unlock; its
// Err says when it was lost.
func (ls *Leases) Lock(ctx context.Context, cluster string, h Holder) (Lock, *Holder, error) {
	api := ls.Client.CoordinationV1().Leases(ls.Namespace)
	id := identity(h)
	until := time.Now().Add(conflictsFor)
	for try := 1; ; try++ {
		if try > 1 {
			if err := again(ctx, until); err != nil {
				return nil, nil, fmt.Errorf("lock %s: lease %s: it kept changing while being taken (%d tries): %w", cluster, ls.where(), try-1, err)
			}
		}
		now := ls.now()
		me := LeaseEntry{ID: id, Holder: h, Renewed: now}
		l, err := api.Get(ctx, ls.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: ls.Name, Namespace: ls.Namespace}}
			if err := ls.fill(l, []LeaseEntry{me}, now); err != nil {
				return nil, nil, fmt.Errorf("lock %s: %w", cluster, err)
			}
			_, err := api.Create(ctx, l, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				continue
			}
			if err != nil {
				return nil, nil, fmt.Errorf("lock %s: lease %s: %w", cluster, ls.where(), err)
			}
			return ls.held(id), nil, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("lock %s: lease %s: %w", cluster, ls.where(), err)
		}
		var live []LeaseEntry
		var prev *Holder
		for _, e := range LeaseEntries(l) {
			if !ls.live(l, &e.Holder, e.Renewed, now) {
				if prev == nil {
					prev = &e.Holder
				}
				continue
			}
			if held := refusal(cluster, e.Holder, h); held != nil {
				held.Lease, held.Renewed = ls.where(), e.Renewed
				return nil, nil, held
			}
			live = append(live, e)
		}
		if len(live) == 0 {
			l.Spec.AcquireTime = nil // taken anew
		}
		if err := ls.fill(l, append(live, me), now); err != nil {
			return nil, nil, fmt.Errorf("lock %s: %w", cluster, err)
		}
		if prev != nil {
			l.Spec.LeaseTransitions = ptr.To(ptr.Deref(l.Spec.LeaseTransitions, 0) + 1)
		}
		_, err = api.Update(ctx, l, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("lock %s: lease %s: %w", cluster, ls.where(), err)
		}
		return ls.held(id), prev, nil
	}
}

// A take or release of a Lease that meets a conflict (another holder's progress: a
// renewal, a take, a release) reads it again after a random wait of up to conflictWait,
// so that the holders that met do not meet again at once, for up to conflictsFor (or
// less, as its context says).
const (
	conflictWait = 20 * time.Millisecond
	conflictsFor = 10 * time.Second
)

// errKeptChanging ends the tries of a take or release after conflictsFor.
var errKeptChanging = errors.New("conflicts for " + conflictsFor.String())

// again waits before another try after a conflict; an error once until has passed or
// ctx is done.
func again(ctx context.Context, until time.Time) error {
	if !time.Now().Before(until) {
		return errKeptChanging
	}
	return wait(ctx, time.Millisecond+rand.N(conflictWait))
}

// live reports whether holder h of Lease l, last renewed at renewed, keeps Lock from
// taking its place at now: not expired, and not a process of this host that is gone.
func (ls *Leases) live(l *coordinationv1.Lease, h *Holder, renewed, now time.Time) bool {
	return h != nil && !expired(l, renewed, now) && !(h.Host == ls.Host && !ls.alive(h.PID))
}

// Held returns a *HeldError if Lock would be refused to h now, reading the Lease only: a
// run checks it before asking its confirmation, so that a question is not asked for a
// run that cannot start, and a refusal leaves no write behind.
func (ls *Leases) Held(ctx context.Context, cluster string, h Holder) error {
	l, err := ls.Client.CoordinationV1().Leases(ls.Namespace).Get(ctx, ls.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("lock %s: lease %s: %w", cluster, ls.where(), err)
	}
	now := ls.now()
	for _, e := range LeaseEntries(l) {
		if !ls.live(l, &e.Holder, e.Renewed, now) {
			continue
		}
		if held := refusal(cluster, e.Holder, h); held != nil {
			held.Lease, held.Renewed = ls.where(), e.Renewed
			return held
		}
	}
	return nil
}

// fill records the holders all in l (none: released): the first in
// spec.holderIdentity and HolderAnnotation, every one in HoldersAnnotation when they
// are more than one, the latest renewal in spec.renewTime.
func (ls *Leases) fill(l *coordinationv1.Lease, all []LeaseEntry, now time.Time) error {
	if l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	if len(all) == 0 {
		l.Spec.HolderIdentity = nil
		l.Spec.RenewTime = nil
		l.Spec.AcquireTime = nil
		delete(l.Annotations, HolderAnnotation)
		delete(l.Annotations, HoldersAnnotation)
		return nil
	}
	first, err := json.Marshal(all[0].Holder)
	if err != nil {
		return err
	}
	l.Annotations[HolderAnnotation] = string(first)
	if len(all) > 1 {
		data, err := json.Marshal(all)
		if err != nil {
			return err
		}
		l.Annotations[HoldersAnnotation] = string(data)
	} else {
		delete(l.Annotations, HoldersAnnotation)
	}
	latest := all[0].Renewed
	for _, e := range all {
		if e.Renewed.After(latest) {
			latest = e.Renewed
		}
	}
	t := metav1.NewMicroTime(latest)
	l.Spec.HolderIdentity = ptr.To(all[0].ID)
	l.Spec.LeaseDurationSeconds = ptr.To(int32(ls.duration() / time.Second))
	l.Spec.RenewTime = &t
	if l.Spec.AcquireTime == nil {
		a := metav1.NewMicroTime(now)
		l.Spec.AcquireTime = &a
	}
	return nil
}

func (ls *Leases) held(id string) *LeaseLock {
	ll := &LeaseLock{ls: ls, id: id, renewed: ls.now(), stop: make(chan struct{}), done: make(chan struct{})}
	go ll.renewLoop()
	return ll
}

// LeaseLock is a held Lease, renewed in the background until Unlock.
type LeaseLock struct {
	ls *Leases
	id string

	mu      sync.Mutex
	renewed time.Time // when it was last renewed
	lost    error

	stop, done chan struct{}
	once       sync.Once
}

var _ Lock = (*LeaseLock)(nil)

// ErrLost is wrapped by LeaseLock.Err once the Lease is lost.
var ErrLost = errors.New("the cluster's lock was lost")

// Err returns nil while the Lease is held, and an error wrapping ErrLost that says why
// once it was lost: taken by another run, or not renewed for its duration.
func (l *LeaseLock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

func (l *LeaseLock) renewLoop() {
	defer close(l.done)
	t := time.NewTicker(l.ls.renewEvery())
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		if l.renew() {
			return
		}
	}
}

// renew renews the Lease once; it returns true when the Lease is lost.
func (l *LeaseLock) renew() bool {
	ctx, cancel := context.WithTimeout(context.Background(), l.ls.renewEvery())
	defer cancel()
	api := l.ls.Client.CoordinationV1().Leases(l.ls.Namespace)
	fail := func(err error) bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		if since := l.ls.now().Sub(l.renewed); since >= l.ls.duration() {
			l.lost = fmt.Errorf("%w: lease %s could not be renewed for %s: %v", ErrLost, l.ls.where(), since.Round(time.Second), err)
			return true
		}
		return false
	}
	// A conflict is a change behind our back, most often another holder of a shared
	// Lease renewing its entry: read again, a few times (waits as again does).
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var cur *coordinationv1.Lease
		cur, err = api.Get(ctx, l.ls.Name, metav1.GetOptions{})
		if err != nil {
			return fail(err)
		}
		all := LeaseEntries(cur)
		mine := -1
		for i, e := range all {
			if e.ID == l.id {
				mine = i
			}
		}
		if mine < 0 {
			l.mu.Lock()
			defer l.mu.Unlock()
			what := "released by someone else"
			if len(all) > 0 {
				what = "taken by " + all[0].Holder.String()
			}
			l.lost = fmt.Errorf("%w: lease %s was %s", ErrLost, l.ls.where(), what)
			return true
		}
		now := l.ls.now()
		all[mine].Renewed = now
		if err = l.ls.fill(cur, all, now); err != nil {
			return fail(err)
		}
		_, err = api.Update(ctx, cur, metav1.UpdateOptions{})
		if err == nil {
			l.mu.Lock()
			l.renewed = now
			l.mu.Unlock()
			return false
		}
		if !apierrors.IsConflict(err) || wait(ctx, time.Millisecond+rand.N(conflictWait)) != nil {
			break
		}
	}
	return fail(err)
}

// Unlock stops the renewal and releases the Lease if this run still holds it: its entry
// is removed (the Lease's holder is cleared when it was the last, so the next run takes
// it at once). It uses a context of its own: an interrupted run releases its lock too.
func (l *LeaseLock) Unlock() error {
	l.once.Do(func() { close(l.stop) })
	<-l.done
	if l.Err() != nil {
		return nil // not ours any more
	}
	until := time.Now().Add(conflictsFor)
	ctx, cancel := context.WithTimeout(context.Background(), conflictsFor+5*time.Second)
	defer cancel()
	api := l.ls.Client.CoordinationV1().Leases(l.ls.Namespace)
	for try := 1; ; try++ {
		if try > 1 {
			if err := again(ctx, until); err != nil {
				return fmt.Errorf("release lease %s: it kept changing (%d tries): %w", l.ls.where(), try-1, err)
			}
		}
		cur, err := api.Get(ctx, l.ls.Name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("release lease %s: %w", l.ls.where(), err)
		}
		var rest []LeaseEntry
		found := false
		for _, e := range LeaseEntries(cur) {
			if e.ID == l.id {
				found = true
				continue
			}
			rest = append(rest, e)
		}
		if !found {
			return nil
		}
		if err := l.ls.fill(cur, rest, l.ls.now()); err != nil {
			return fmt.Errorf("release lease %s: %w", l.ls.where(), err)
		}
		_, err = api.Update(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("release lease %s: %w", l.ls.where(), err)
		}
		return nil
	}
}

// Renewed returns when the Lease was last renewed.
func (l *LeaseLock) Renewed() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.renewed
}
