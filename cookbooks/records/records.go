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
	managedBy      = "cookbook"
	namePrefix     = "cookbook-run-"
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

// Put writes the record of run: it creates or replaces its ConfigMap.
func (c *Cluster) Put(ctx context.Context, run *state.Run) error {
	data, err := json.MarshalIndent(run, "", "  ")
	if err != nil {
		return fmt.Errorf("record of run %s: %w", run.ID, err)
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
