// Package records keeps a copy of each run record in the cluster it ran on: one
// ConfigMap per run, so that `cookbook runs`, `runs show`, `resume` and `abandon` work
// from every operator host. Run records hold no secret, so a ConfigMap is fit.
package records

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"example.com/cookbook/cookbooks/state"
)

// Labels and the data key of a run's ConfigMap.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	LabelCookbook  = "cookbook.toolforge.org/cookbook"
	LabelCluster   = "cookbook.toolforge.org/cluster"
	LabelStatus    = "cookbook.toolforge.org/status"
	DataKey        = "run.json"
	// TailKey holds the end of the run's log (Tail, JSON), when the writer gave it.
	TailKey    = "log-tail.json"
	managedBy  = "cookbook"
	namePrefix = "cookbook-run-"
)

// ErrNotFound is returned by Get for a run the cluster has no record of.
var ErrNotFound = errors.New("no record of the run in the cluster")

// Cluster is the run records of one cluster, ConfigMaps in Namespace.
type Cluster struct {
	Client    kubernetes.Interface
	Namespace string
	// Cluster is the cluster's name in the configuration (a label on each record).
	Cluster string
}

// Name returns the ConfigMap name of run id.
func Name(id string) string { return namePrefix + id }

// Tail is the end of a run's log as its record carries it: Lines are the log's lines
// from line First on (0-based, counted from the log's start), at most TailLines of
// them, each cut to TailLineBytes. Log lines hold no secret (see the README).
type Tail struct {
	First int      `json:"first"`
	Lines []string `json:"lines"`
}

// Bounds of a Tail: the record stays far below a ConfigMap's 1 MiB.
const (
	TailLines     = 50
	TailLineBytes = 400
)

// Put writes the record of run: it creates or replaces its ConfigMap.
func (c *Cluster) Put(ctx context.Context, run *state.Run) error {
	return c.PutTail(ctx, run, nil)
}

// PutTail is Put with the end of the run's log (nil: none).
func (c *Cluster) PutTail(ctx context.Context, run *state.Run, tail *Tail) error {
	data, err := json.MarshalIndent(run, "", "  ")
	if err != nil {
		return fmt.Errorf("record of run %s: %w", run.ID, err)
	}
	var tailData []byte
	if tail != nil {
		if tailData, err = json.Marshal(tail); err != nil {
			return fmt.Errorf("record of run %s: log tail: %w", run.ID, err)
		}
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Name:      Name(run.ID),
			Namespace: c.Namespace,
			Labels: map[string]string{
				LabelManagedBy: managedBy,
				LabelCookbook:  run.Cookbook,
				LabelCluster:   c.Cluster,
				LabelStatus:    string(run.Status),
			},
		},
		Data: map[string]string{DataKey: string(data)},
	}
	if tail != nil {
		cm.Data[TailKey] = string(tailData)
	}
	api := c.Client.CoreV1().ConfigMaps(c.Namespace)
	// An update without a resourceVersion replaces the record, whoever wrote it last:
	// only the run's lock holder writes it.
	_, err = api.Update(ctx, cm, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		_, err = api.Create(ctx, cm, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			_, err = api.Update(ctx, cm, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		return fmt.Errorf("record of run %s in %s/%s: %w", run.ID, c.Namespace, Name(run.ID), err)
	}
	return nil
}

// Get returns the record of run id, or an error wrapping ErrNotFound.
func (c *Cluster) Get(ctx context.Context, id string) (*state.Run, error) {
	cm, err := c.Client.CoreV1().ConfigMaps(c.Namespace).Get(ctx, Name(id), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("run %s: %w %s", id, ErrNotFound, c.Cluster)
	}
	if err != nil {
		return nil, fmt.Errorf("record of run %s in cluster %s: %w", id, c.Cluster, err)
	}
	return decode(c.Namespace, cm, id)
}

// tailOf returns the log tail a record carries, nil for none (or one that cannot be
// read: the tail is a convenience, the run record is what counts).
func tailOf(cm *corev1.ConfigMap) *Tail {
	raw, ok := cm.Data[TailKey]
	if !ok {
		return nil
	}
	var t Tail
	if json.Unmarshal([]byte(raw), &t) != nil {
		return nil
	}
	return &t
}

func decode(ns string, cm *corev1.ConfigMap, id string) (*state.Run, error) {
	return state.Decode(fmt.Sprintf("run record ConfigMap %s/%s", ns, cm.Name), id, []byte(cm.Data[DataKey]))
}

// List returns the cluster's run records, newest first; records that cannot be read are
// returned as errors alongside.
func (c *Cluster) List(ctx context.Context) ([]*state.Run, []error) {
	list, err := c.Client.CoreV1().ConfigMaps(c.Namespace).List(ctx, metav1.ListOptions{LabelSelector: c.selector()})
	if err != nil {
		return nil, []error{fmt.Errorf("run records of cluster %s: %w", c.Cluster, err)}
	}
	var runs []*state.Run
	var errs []error
	for i := range list.Items {
		cm := &list.Items[i]
		if len(cm.Name) <= len(namePrefix) {
			continue
		}
		r, err := decode(c.Namespace, cm, cm.Name[len(namePrefix):])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		runs = append(runs, r)
	}
	sort.Slice(runs, func(i, j int) bool {
		if !runs[i].StartedAt.Equal(runs[j].StartedAt) {
			return runs[i].StartedAt.After(runs[j].StartedAt)
		}
		return runs[i].ID > runs[j].ID
	})
	return runs, errs
}

func (c *Cluster) selector() string {
	return LabelManagedBy + "=" + managedBy + "," + LabelCluster + "=" + c.Cluster
}

// Prune deletes the records of finished runs beyond the keep newest ones (by start
// time); unfinished runs are never pruned. It returns the ids it deleted.
func (c *Cluster) Prune(ctx context.Context, keep int) ([]string, error) {
	runs, errs := c.List(ctx)
	if len(runs) == 0 && len(errs) > 0 {
		return nil, errs[0]
	}
	var deleted []string
	kept := 0
	for _, r := range runs {
		if r.Resumable() {
			continue
		}
		if kept < keep {
			kept++
			continue
		}
		err := c.Client.CoreV1().ConfigMaps(c.Namespace).Delete(ctx, Name(r.ID), metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return deleted, fmt.Errorf("prune run record %s: %w", r.ID, err)
		}
		deleted = append(deleted, r.ID)
	}
	return deleted, nil
}

// Newer returns the current one of two copies of a run (either may be nil): the one
// saved last.
func Newer(a, b *state.Run) *state.Run {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	at, bt := savedAt(a), savedAt(b)
	if bt.After(at) {
		return b
	}
	return a
}

func savedAt(r *state.Run) time.Time {
	if r.SavedAt != nil {
		return *r.SavedAt
	}
	return time.Time{}
}

// Follow calls fn with the record of run id and its log tail, then again each time the
// record changes, until fn returns true or an error, or ctx ends (nil). It watches the
// run's ConfigMap (a watch restarts where it ended); where the API refuses the watch it
// reads the record every poll. Every tick it calls fn with the last record again, so
// the caller can look at what the record cannot say (whether its writer still holds its
// lease).
func (c *Cluster) Follow(ctx context.Context, id string, tick, poll time.Duration, fn func(*state.Run, *Tail) (bool, error)) error {
	api := c.Client.CoreV1().ConfigMaps(c.Namespace)
	cm, err := api.Get(ctx, Name(id), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("run %s: %w %s", id, ErrNotFound, c.Cluster)
	}
	if err != nil {
		return fmt.Errorf("record of run %s in cluster %s: %w", id, c.Cluster, err)
	}
	var last *corev1.ConfigMap
	seen := func(cm *corev1.ConfigMap) (bool, error) {
		if last != nil && last.ResourceVersion == cm.ResourceVersion {
			return false, nil
		}
		last = cm
		run, err := decode(c.Namespace, cm, id)
		if err != nil {
			return false, err
		}
		return fn(run, tailOf(cm))
	}
	again := func() (bool, error) {
		run, err := decode(c.Namespace, last, id)
		if err != nil {
			return false, err
		}
		return fn(run, tailOf(last))
	}
	if stop, err := seen(cm); stop || err != nil {
		return err
	}
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	polling := false
	for ctx.Err() == nil {
		var events <-chan watch.Event
		var w watch.Interface
		if !polling {
			w, err = api.Watch(ctx, metav1.ListOptions{
				FieldSelector:   fields.OneTermEqualSelector("metadata.name", Name(id)).String(),
				ResourceVersion: last.ResourceVersion,
			})
			if err != nil {
				polling = true
			} else {
				events = w.ResultChan()
			}
		}
		stop, err := func() (bool, error) {
			if w != nil {
				defer w.Stop()
			}
			var wait <-chan time.Time
			if polling {
				t := time.NewTimer(poll)
				defer t.Stop()
				wait = t.C
			}
			for {
				select {
				case <-ctx.Done():
					return false, nil
				case <-ticker.C:
					if stop, err := again(); stop || err != nil {
						return stop, err
					}
				case <-wait:
					cm, err := api.Get(ctx, Name(id), metav1.GetOptions{})
					if err != nil {
						return false, nil // read again at the next poll
					}
					return seen(cm)
				case ev, ok := <-events:
					if !ok {
						return false, nil // the watch ended: start another
					}
					switch ev.Type {
					case watch.Added, watch.Modified:
						if cm, ok := ev.Object.(*corev1.ConfigMap); ok {
							if stop, err := seen(cm); stop || err != nil {
								return stop, err
							}
						}
					case watch.Deleted:
						return false, fmt.Errorf("run %s: its record in cluster %s was deleted", id, c.Cluster)
					case watch.Error:
						// Too old a resourceVersion, mostly: read the record and watch anew.
						cm, err := api.Get(ctx, Name(id), metav1.GetOptions{})
						if err != nil {
							return false, nil
						}
						return seen(cm)
					}
				}
			}
		}()
		if stop || err != nil {
			return err
		}
	}
	return nil
}
