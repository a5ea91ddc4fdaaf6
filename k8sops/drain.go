package k8sops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/kubectl/pkg/drain"
	"k8s.io/kubectl/pkg/util/podutils"
)

// DrainOptions say which pods a drain may remove and how.
type DrainOptions struct {
	// Force evicts pods that no controller will replace (bare pods).
	Force bool
	// DeleteEmptyDirData evicts pods with emptyDir volumes, whose data is lost.
	DeleteEmptyDirData bool
	// DisableEviction deletes pods instead of evicting them, bypassing disruption
	// budgets: an explicit operator choice, never automatic.
	DisableEviction bool
	// GracePeriodSeconds overrides the pods' own termination grace periods when >= 0;
	// nil respects each pod's own.
	GracePeriodSeconds *int64
	// Timeout bounds the whole drain; 10 minutes if zero.
	Timeout time.Duration
	// SkipWaitForDeleteTimeout, when more than zero, is how long after its deletion
	// time (metadata.deletionTimestamp) a pod on a node that is not Ready is no longer
	// waited for, as kubectl drain's --skip-wait-for-delete-timeout and Cluster API do
	// for unreachable nodes: no kubelet will confirm the deletion. Zero waits for every
	// pod. A Ready node's pods are always waited for.
	SkipWaitForDeleteTimeout time.Duration
}

// DefaultSkipWaitForDeleteTimeout is the SkipWaitForDeleteTimeout of the drain flags
// when neither the flag nor the cluster's configuration sets it: Cluster API's
// five minutes for unreachable nodes.
const DefaultSkipWaitForDeleteTimeout = 5 * time.Minute

// DefaultDrainTimeout is the drain timeout when none is given.
const DefaultDrainTimeout = 10 * time.Minute

// DrainPlan says what a drain of a node would do now.
type DrainPlan struct {
	Node string
	// Evict are the pods (namespace/name) the drain removes.
	Evict []string
	// Skipped says which pods stay and why, as kubectl's drain filters put it
	// ("ignoring DaemonSet-managed Pods: ...").
	Skipped []string
	// Blocking are the pods that stop the drain unless a flag allows them, with the flag.
	Blocking []string
	// PDBs are the disruption budgets that select pods to evict, with their state now.
	PDBs []PDBState

	pods []corev1.Pod
}

// PDBState is a disruption budget as a drain sees it.
type PDBState struct {
	Namespace, Name string
	// DisruptionsAllowed is the budget's status now.
	DisruptionsAllowed int32
	// ExpectedPods, DesiredHealthy and CurrentHealthy are the rest of its status: a
	// budget whose ExpectedPods - DesiredHealthy is 0 never allows a disruption; one
	// with CurrentHealthy < ExpectedPods is at 0 while a pod is down (being evicted,
	// restarting).
	ExpectedPods, DesiredHealthy, CurrentHealthy int32
	// Pods are the pods to evict that it selects.
	Pods []string
}

// WouldBlock reports whether the budget does not allow evicting all its pods on the
// node at once now: the drain will wait on it.
func (p PDBState) WouldBlock() bool { return int(p.DisruptionsAllowed) < len(p.Pods) }

func (p PDBState) String() string {
	return fmt.Sprintf("%s/%s (allows %d disruption(s), selects %s)", p.Namespace, p.Name, p.DisruptionsAllowed, strings.Join(p.Pods, ", "))
}

func podKey(p *corev1.Pod) string { return p.Namespace + "/" + p.Name }

// PlanDrain computes what draining the node would do now, with kubectl's drain filters:
// DaemonSet and mirror pods stay; pods with emptyDir volumes need DeleteEmptyDirData;
// pods without a controller need Force.
func (o *Ops) PlanDrain(ctx context.Context, node string, opts DrainOptions) (*DrainPlan, error) {
	return o.planDrain(ctx, node, opts, nil)
}

// planDrain is PlanDrain, with the budgets read from the shared watch when not nil
// rather than listed.
func (o *Ops) planDrain(ctx context.Context, node string, opts DrainOptions, shared cache.SharedIndexInformer) (*DrainPlan, error) {
	h := &drain.Helper{
		Ctx: ctx, Client: o.Client,
		Force: opts.Force, DeleteEmptyDirData: opts.DeleteEmptyDirData,
		IgnoreAllDaemonSets: true, GracePeriodSeconds: -1,
		Out: io.Discard, ErrOut: io.Discard,
	}
	var gone []string
	if opts.SkipWaitForDeleteTimeout > 0 {
		dead, err := o.notReady(ctx, node)
		if err != nil {
			return nil, err
		}
		if dead {
			// kubectl's filter leaves out, without a word, the pods whose deletion
			// started longer ago than this; the plan names them.
			h.SkipWaitForDeleteTimeoutSeconds = int(opts.SkipWaitForDeleteTimeout / time.Second)
			if gone, err = o.deletedBefore(ctx, node, opts.SkipWaitForDeleteTimeout); err != nil {
				return nil, err
			}
		}
	}
	list, errs := h.GetPodsForDeletion(node)
	if list == nil {
		return nil, fmt.Errorf("list pods of node %s: %w", node, errors.Join(errs...))
	}
	plan := &DrainPlan{Node: node, pods: list.Pods()}
	if len(gone) > 0 {
		plan.Skipped = append(plan.Skipped, fmt.Sprintf("not waited for (the node is not Ready and their deletion started more than %s ago): %s",
			opts.SkipWaitForDeleteTimeout, strings.Join(gone, ", ")))
	}
	for _, p := range plan.pods {
		plan.Evict = append(plan.Evict, podKey(&p))
	}
	for _, w := range strings.FieldsFunc(list.Warnings(), func(r rune) bool { return r == '\n' || r == ';' }) {
		if w = strings.TrimSpace(w); w != "" {
			plan.Skipped = append(plan.Skipped, w)
		}
	}
	for _, e := range errs {
		for _, line := range strings.Split(e.Error(), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				plan.Blocking = append(plan.Blocking, line)
			}
		}
	}
	pdbs, err := o.pdbsFor(ctx, plan.pods, shared)
	if err != nil {
		return nil, err
	}
	plan.PDBs = pdbs
	return plan, nil
}

// notReady reports whether the node's Ready condition is not True.
func (o *Ops) notReady(ctx context.Context, node string) (bool, error) {
	n, err := o.Node(ctx, node)
	if err != nil {
		return false, err
	}
	return !IsReady(n), nil
}

// deletedBefore names the pods of the node whose deletion time is more than d ago, by
// kubectl's rule (whole seconds).
func (o *Ops) deletedBefore(ctx context.Context, node string, d time.Duration) ([]string, error) {
	pods, err := o.Client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return nil, fmt.Errorf("list pods of node %s: %w", node, err)
	}
	var out []string
	for i := range pods.Items {
		if overdue(&pods.Items[i], d, time.Now()) {
			out = append(out, podKey(&pods.Items[i]))
		}
	}
	sort.Strings(out)
	return out, nil
}

// overdue reports whether the pod's deletion time is more than d before now, in whole
// seconds as kubectl's drain counts it.
func overdue(p *corev1.Pod, d time.Duration, now time.Time) bool {
	ts := p.DeletionTimestamp
	return d > 0 && ts != nil && !ts.IsZero() && int(now.Sub(ts.Time).Seconds()) > int(d/time.Second)
}

// pdbsFor lists the budgets of the pods' namespaces (from the shared watch's cache when
// not nil) and returns those selecting them.
func (o *Ops) pdbsFor(ctx context.Context, pods []corev1.Pod, shared cache.SharedIndexInformer) ([]PDBState, error) {
	byNS := map[string][]corev1.Pod{}
	for _, p := range pods {
		byNS[p.Namespace] = append(byNS[p.Namespace], p)
	}
	var out []PDBState
	for ns, nsPods := range byNS {
		var list []policyv1.PodDisruptionBudget
		if shared != nil {
			objs, err := shared.GetIndexer().ByIndex(cache.NamespaceIndex, ns)
			if err != nil {
				return nil, fmt.Errorf("disruption budgets of %s: %w", ns, err)
			}
			for _, obj := range objs {
				list = append(list, *obj.(*policyv1.PodDisruptionBudget))
			}
		} else {
			var err error
			if list, err = o.listPDBs(ctx, ns, metav1.ListOptions{}); err != nil {
				return nil, fmt.Errorf("list disruption budgets of %s: %w", ns, err)
			}
		}
		for i := range list {
			pdb := &list[i]
			st := PDBState{Namespace: ns, Name: pdb.Name, DisruptionsAllowed: pdb.Status.DisruptionsAllowed,
				ExpectedPods: pdb.Status.ExpectedPods, DesiredHealthy: pdb.Status.DesiredHealthy, CurrentHealthy: pdb.Status.CurrentHealthy}
			for j := range nsPods {
				if selects(pdb, &nsPods[j]) {
					st.Pods = append(st.Pods, nsPods[j].Name)
				}
			}
			if len(st.Pods) > 0 {
				out = append(out, st)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name })
	return out, nil
}

// watchedPDB is a budget as a drain watches it, its selector parsed once per change (every
// waiting pod looks at every budget of its namespace at each change of any of them).
type watchedPDB struct {
	*policyv1.PodDisruptionBudget
	sel labels.Selector
}

func newWatchedPDB(pdb *policyv1.PodDisruptionBudget) watchedPDB {
	return watchedPDB{PodDisruptionBudget: pdb, sel: pdbSelector(pdb)}
}

func (w watchedPDB) selects(p *corev1.Pod) bool {
	return w.Namespace == p.Namespace && w.sel.Matches(labels.Set(p.Labels))
}

// pdbSelector is the budget's selector as policy/v1, the API server's eviction and the
// disruption controller read it: an empty selector ({}) selects every pod of the budget's
// namespace, a missing one (nil) or one that does not parse selects none.
func pdbSelector(pdb *policyv1.PodDisruptionBudget) labels.Selector {
	sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	if err != nil {
		return labels.Nothing()
	}
	return sel
}

func selects(pdb *policyv1.PodDisruptionBudget, p *corev1.Pod) bool {
	return pdb.Namespace == p.Namespace && pdbSelector(pdb).Matches(labels.Set(p.Labels))
}

// Log writes the plan to the log: what goes, what stays and why, what would block.
func (o *Ops) logPlan(plan *DrainPlan) {
	l := o.log().With("node", plan.Node)
	// The pods are named once each as they are evicted; the plan line says how many.
	o.log().Info(fmt.Sprintf("drain plan for %s: %d pod(s) to evict", plan.Node, len(plan.Evict)))
	l.Debug("pods to evict", "pods", strings.Join(plan.Evict, " "))
	for _, s := range plan.Skipped {
		l.Info("stays: " + s)
	}
	for _, b := range plan.Blocking {
		l.Warn("blocks the drain: " + b)
	}
	for _, p := range plan.PDBs {
		if p.WouldBlock() {
			o.log().Info(fmt.Sprintf("disruption budget %s/%s would hold the drain of %s now (allows %d)", p.Namespace, p.Name, plan.Node, p.DisruptionsAllowed))
			l.Debug("disruption budget " + p.String())
		} else {
			l.Debug("disruption budget allows it now: " + p.String())
		}
	}
}

// Drain evicts every pod of the node that may go, all at once, and waits until they are
// gone. An eviction refused by a disruption budget is retried as soon as the budget's
// status allows it (its changes are watched), never on a timer. Pods that block the
// drain without Force or DeleteEmptyDirData make it fail before anything is evicted. In
// dry-run it logs the plan: the pods that would go, those that stay and why, and the
// budgets that would block now; each eviction is sent as a server-side dry-run, and one
// the API server would refuse now (a disruption budget, RBAC, admission) is logged as
// "DRY-RUN: eviction of NS/POD would be refused now: REASON". The node should be
// cordoned first.
func (o *Ops) Drain(ctx context.Context, node string, opts DrainOptions) error {
	return o.drain(ctx, node, opts, nil)
}

// drain is Drain; with a shared budget watch (not nil, synced) it reads and watches the
// budgets there instead of listing and watching them itself.
func (o *Ops) drain(ctx context.Context, node string, opts DrainOptions, shared cache.SharedIndexInformer) error {
	plan, err := o.planDrain(ctx, node, opts, shared)
	if err != nil {
		return err
	}
	o.logPlan(plan)
	if len(plan.Blocking) > 0 {
		return fmt.Errorf("drain %s: %s", node, strings.Join(plan.Blocking, "; "))
	}
	if len(plan.pods) == 0 {
		return nil
	}
	if o.Gate.Enabled() {
		// A rehearsal asks the API server about each eviction now and waits for nothing.
		for i := range plan.pods {
			if err := o.removePod(ctx, node, &plan.pods[i], opts); err != nil {
				return fmt.Errorf("drain %s: %w", node, err)
			}
		}
		return nil
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = DefaultDrainTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := &drainer{ops: o, node: node, opts: opts, shared: shared, waiting: map[string]string{}, remaining: map[types.UID]string{}, deleted: map[types.UID]metav1.Time{}}
	return d.run(ctx, plan)
}

// removePod evicts the pod, or deletes it when eviction is disabled, through the gate.
// The returned error is the API server's (429 while a disruption budget refuses).
func (o *Ops) removePod(ctx context.Context, node string, p *corev1.Pod, opts DrainOptions) error {
	key := podKey(p)
	del := func(dryRun []string) *metav1.DeleteOptions {
		return &metav1.DeleteOptions{GracePeriodSeconds: opts.GracePeriodSeconds, Preconditions: &metav1.Preconditions{UID: &p.UID}, DryRun: dryRun}
	}
	if opts.DisableEviction {
		action := fmt.Sprintf("delete pod %s from node %s (eviction disabled: disruption budgets bypassed)", key, node)
		return o.write(ctx, action, "deletion of "+key, func(ctx context.Context, dryRun []string) error {
			req := o.Client.CoreV1().RESTClient().Delete().Namespace(p.Namespace).Resource("pods").Name(p.Name)
			return withDryRun(req, dryRun).Body(del(dryRun)).Do(ctx).Error()
		})
	}
	return o.write(ctx, fmt.Sprintf("evict pod %s from node %s", key, node), "eviction of "+key, func(ctx context.Context, dryRun []string) error {
		ev := &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace}, DeleteOptions: del(dryRun)}
		// As client-go's Evict, with the dry-run in the URL too.
		req := o.Client.PolicyV1().RESTClient().Post().AbsPath("/api/v1").Namespace(p.Namespace).Resource("pods").Name(p.Name).SubResource("eviction")
		return withDryRun(req, dryRun).Body(ev).Do(ctx).Error()
	})
}

// drainer is one drain in progress.
type drainer struct {
	ops    *Ops
	node   string
	opts   DrainOptions
	shared cache.SharedIndexInformer // the run's budget watch, or nil: the drain's own

	mu         sync.Mutex
	budgets    map[string]*budget        // namespace/name -> latest
	setChanged chan struct{}             // closed and replaced when a budget comes, goes or changes its selector
	setGen     int                       // counts those changes
	selecting  map[types.UID]selection   // pod -> the budgets selecting it, as of a setGen
	waiting    map[string]string         // pod -> why it waits
	remaining  map[types.UID]string      // pods not gone yet
	deleted    map[types.UID]metav1.Time // their deletion times, as seen
	pods       cache.Store               // the node's pods, as watched
	gone       chan struct{}             // closed when remaining is empty
}

// budget is a disruption budget as a drain watches it, with the disruptions the drain may
// still start by its latest status: each eviction sent claims one (the API server
// decrements the status by one for each eviction it grants), and each status seen sets
// it anew. Only that many of its pods are evicted at once, so a budget allowing one
// disruption is asked once, not by each of its waiting pods (which all but one would see
// refused with 429).
type budget struct {
	watchedPDB
	allowed int32
	changed chan struct{} // closed and replaced when the budget changes
}

// selection is the budgets selecting a pod, computed at a setGen.
type selection struct {
	gen  int
	keys []string
}

// budgetResync is how long a pod waits for its budget to change before the drain looks
// again: at the pod (asked for without a claim if it is not Ready any more) and at the
// budget's last status. kubectl drain's delay between tries.
const budgetResync = 5 * time.Second

func (d *drainer) run(ctx context.Context, plan *DrainPlan) error {
	d.setChanged = make(chan struct{})
	d.budgets = map[string]*budget{}
	d.selecting = map[types.UID]selection{}
	d.gone = make(chan struct{})
	for _, p := range plan.pods {
		d.remaining[p.UID] = podKey(&p)
	}
	stop := make(chan struct{})
	defer close(stop)
	if err := d.watchPods(ctx, stop); err != nil {
		return err
	}
	if err := d.watchPDBs(ctx, plan.pods, stop); err != nil {
		return err
	}

	errc := make(chan error, len(plan.pods))
	for i := range plan.pods {
		p := plan.pods[i]
		go func() { errc <- d.remove(ctx, &p) }()
	}
	ticker := time.NewTicker(d.ops.reportEvery())
	defer ticker.Stop()
	// With SkipWaitForDeleteTimeout, the pods are looked at every second (or a quarter
	// of it when shorter): those overdue on a node that is not Ready are let go.
	var overdueC <-chan time.Time
	if d.opts.SkipWaitForDeleteTimeout > 0 {
		t := time.NewTicker(min(time.Second, max(d.opts.SkipWaitForDeleteTimeout/4, 50*time.Millisecond)))
		defer t.Stop()
		overdueC = t.C
	}
	for {
		select {
		case err := <-errc:
			if err != nil && ctx.Err() == nil {
				return fmt.Errorf("drain %s: %w", d.node, err)
			}
		case <-d.gone:
			d.ops.log().Info("all evicted pods are gone", "node", d.node)
			return nil
		case <-overdueC:
			if err := d.letOverdueGo(ctx); err != nil && ctx.Err() == nil {
				return fmt.Errorf("drain %s: %w", d.node, err)
			}
		case <-ticker.C:
			d.report()
		case <-ctx.Done():
			return fmt.Errorf("drain %s: %w: %s", d.node, ErrTimeout, d.stillThere())
		}
	}
}

// letOverdueGo stops waiting for the pods whose deletion time is more than
// SkipWaitForDeleteTimeout ago, if the node is not Ready: no kubelet will confirm it.
func (d *drainer) letOverdueGo(ctx context.Context) error {
	now := time.Now()
	d.mu.Lock()
	var due []types.UID
	for uid := range d.remaining {
		if ts, ok := d.deleted[uid]; ok && overdue(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{DeletionTimestamp: &ts}}, d.opts.SkipWaitForDeleteTimeout, now) {
			due = append(due, uid)
		}
	}
	d.mu.Unlock()
	if len(due) == 0 {
		return nil
	}
	dead, err := d.ops.notReady(ctx, d.node)
	if err != nil || !dead {
		return err
	}
	d.mu.Lock()
	var names []string
	for _, uid := range due {
		if name, ok := d.remaining[uid]; ok {
			names = append(names, name)
			delete(d.remaining, uid)
		}
	}
	d.mu.Unlock()
	sort.Strings(names)
	d.ops.log().Warn(fmt.Sprintf("not waiting for %d pod(s) any longer: the node is not Ready and their deletion started more than %s ago", len(names), d.opts.SkipWaitForDeleteTimeout),
		"node", d.node, "pods", strings.Join(names, " "))
	d.checkGone()
	return nil
}

// checkGone closes d.gone once no pod remains.
func (d *drainer) checkGone() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.remaining) == 0 {
		select {
		case <-d.gone:
		default:
			close(d.gone)
		}
	}
}

// remove evicts (or deletes) one pod, once the budgets selecting it allow a disruption
// this drain has not claimed yet, and waits on them again while they refuse. A pod not
// Ready is asked for at once, claim or not (the API server may evict an unhealthy pod
// whatever its budget allows); see await for one that turns unready while it waits. An
// eviction refused (429) is never asked for again at once: the pod waits for a change of
// its budgets or of the set of budgets since the eviction went out, or budgetResync.
func (d *drainer) remove(ctx context.Context, p *corev1.Pod) error {
	key := podKey(p)
	force := !podutils.IsPodReady(p)
	for {
		// wait is what a refusal waits on, taken before the eviction goes out so that a
		// change in between is not missed.
		var claimed bool
		var wait []chan struct{}
		if force {
			wait = d.changes(p)
		} else {
			var ok bool
			ok, wait = d.claim(p)
			if !ok {
				d.setWaiting(key, d.blockers(p, nil))
				var alive bool
				if force, alive = d.await(ctx, p, wait); !alive {
					return ctx.Err()
				}
				continue
			}
			claimed = true
		}
		force = false
		err := d.ops.removePod(ctx, d.node, p, d.opts)
		switch {
		case err == nil:
			d.setWaiting(key, "")
			d.ops.log().Debug("evicted", "pod", key, "node", d.node)
			return nil
		case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
			// Gone already, or replaced by another pod of the same name.
			if claimed {
				d.unclaim(p)
			}
			d.setWaiting(key, "")
			return nil
		case apierrors.IsTooManyRequests(err):
			// The status of a budget here was behind the API server's (the claim stays
			// taken until the next status comes), or the API server applies a budget this
			// drain has not seen (yet), or the pod was asked for as not Ready: the next
			// try waits for a budget to change, or budgetResync.
			d.setWaiting(key, d.blockers(p, err))
			var alive bool
			if force, alive = d.await(ctx, p, wait); !alive {
				return ctx.Err()
			}
		case apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err):
			// An API server too busy to answer in time (seen in a lab of 20,000 pods on 2
			// cores): the eviction may or may not have happened; asking again is safe
			// (NotFound or Conflict then), within the drain's own timeout.
			d.setWaiting(key, "the API server timed out; asking again")
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
		default:
			return fmt.Errorf("evict %s: %w", key, err)
		}
	}
}

// budgetsOf returns the budgets selecting p, computed again only when budgets came, went
// or changed their selectors. d.mu is held.
func (d *drainer) budgetsOf(p *corev1.Pod) []*budget {
	sel, ok := d.selecting[p.UID]
	if !ok || sel.gen != d.setGen {
		sel = selection{gen: d.setGen}
		for k, b := range d.budgets {
			if b.selects(p) {
				sel.keys = append(sel.keys, k)
			}
		}
		d.selecting[p.UID] = sel
	}
	out := make([]*budget, 0, len(sel.keys))
	for _, k := range sel.keys {
		out = append(out, d.budgets[k])
	}
	return out
}

// changesOf returns the channels closed when one of bs changes or budgets come, go or
// change their selectors. d.mu is held.
func (d *drainer) changesOf(bs []*budget) []chan struct{} {
	out := make([]chan struct{}, 0, len(bs)+1)
	for _, b := range bs {
		out = append(out, b.changed)
	}
	return append(out, d.setChanged)
}

// changes is changesOf the budgets selecting p now.
func (d *drainer) changes(p *corev1.Pod) []chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.changesOf(d.budgetsOf(p))
}

// claim takes one disruption of each budget selecting p, if each has one left, and returns
// what a refusal of the eviction waits on: a change of any of them or of the set of
// budgets. If one has none left, it returns what to wait on: that budget changing, or the
// budgets changing.
func (d *drainer) claim(p *corev1.Pod) (ok bool, wait []chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	bs := d.budgetsOf(p)
	for _, b := range bs {
		if b.allowed < 1 {
			return false, d.changesOf([]*budget{b})
		}
	}
	for _, b := range bs {
		b.allowed--
	}
	return true, d.changesOf(bs)
}

// unclaim gives back the disruptions claimed for p's eviction, which did not happen.
func (d *drainer) unclaim(p *corev1.Pod) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, b := range d.budgetsOf(p) {
		b.allowed++
	}
}

// await waits until one of wait is closed (the pod claims again then). After budgetResync
// without that it reports force if the pod is not Ready now (the API server may evict an
// unhealthy pod whatever its budget allows), else it takes the last status seen of the
// pod's budgets as it is (a claim taken for an eviction that timed out and never happened
// is given back so). It returns alive false when ctx ends.
func (d *drainer) await(ctx context.Context, p *corev1.Pod, wait []chan struct{}) (force, alive bool) {
	t := time.NewTimer(budgetResync)
	defer t.Stop()
	cases := make([]reflect.SelectCase, 0, len(wait)+2)
	cases = append(cases,
		reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())},
		reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(t.C)})
	for _, c := range wait {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(c)})
	}
	switch i, _, _ := reflect.Select(cases); i {
	case 0:
		return false, false
	case 1:
	default:
		return false, true
	}
	if obj, ok, _ := d.pods.GetByKey(podKey(p)); ok {
		if now, ok := obj.(*corev1.Pod); ok && now.UID == p.UID && !podutils.IsPodReady(now) {
			return true, true
		}
	}
	d.mu.Lock()
	for _, b := range d.budgetsOf(p) {
		b.allowed = statusAllows(b.PodDisruptionBudget)
	}
	d.mu.Unlock()
	return false, true
}

// statusAllows is the disruptions the budget's status allows: none while the status is
// not of the budget's latest spec (the API server refuses evictions then, with 429 and a
// Retry-After of 10 s, which client-go would sit out).
func statusAllows(pdb *policyv1.PodDisruptionBudget) int32 {
	if pdb.Status.ObservedGeneration < pdb.Generation {
		return 0
	}
	return pdb.Status.DisruptionsAllowed
}

// blockers names the budgets refusing p's eviction and, when the API server refused it
// (refused not nil), why it says it did: the budget it names may be one this drain does
// not know of.
func (d *drainer) blockers(p *corev1.Pod, refused error) string {
	d.mu.Lock()
	var out []string
	for _, pdb := range d.budgetsOf(p) {
		out = append(out, fmt.Sprintf("PDB %s/%s allows %d disruption(s) (%d/%d healthy)", pdb.Namespace, pdb.Name,
			pdb.Status.DisruptionsAllowed, pdb.Status.CurrentHealthy, pdb.Status.DesiredHealthy))
	}
	d.mu.Unlock()
	sort.Strings(out)
	if refused != nil {
		out = append(out, "eviction refused (429): "+budgetRefusal(refused))
	}
	return strings.Join(out, ", ")
}

// budgetRefusal is what the API server says of a refused eviction: the disruption budget
// causes it gives ("The disruption budget web needs 3 healthy pods and has 3 currently"),
// else its whole reason.
func budgetRefusal(err error) string {
	var st apierrors.APIStatus
	if !errors.As(err, &st) {
		return err.Error()
	}
	var causes []string
	if det := st.Status().Details; det != nil {
		for _, c := range det.Causes {
			if c.Type == policyv1.DisruptionBudgetCause && c.Message != "" {
				causes = append(causes, c.Message)
			}
		}
	}
	if len(causes) == 0 {
		return refusal(st)
	}
	return strings.Join(causes, "; ")
}

func (d *drainer) setWaiting(pod, why string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if why == "" {
		delete(d.waiting, pod)
	} else {
		d.waiting[pod] = why
	}
}

// reportBudgets is how many budgets a report names, one line each.
const reportBudgets = 5

// report logs which pods wait on which budget: at most once per report interval.
func (d *drainer) report() {
	d.mu.Lock()
	byWhy := map[string][]string{}
	for pod, why := range d.waiting {
		byWhy[why] = append(byWhy[why], pod)
	}
	left := len(d.remaining)
	d.mu.Unlock()
	whys := make([]string, 0, len(byWhy))
	for why := range byWhy {
		whys = append(whys, why)
	}
	sort.Strings(whys)
	// A node with many pods under many budgets would log a line per budget at every
	// report: the first few are named, the rest counted in one line.
	rest := 0
	for i, why := range whys {
		pods := byWhy[why]
		if i >= reportBudgets {
			rest += len(pods)
			continue
		}
		sort.Strings(pods)
		d.ops.log().Info("waiting on disruption budget", "node", d.node, "budget", why, "pods", strings.Join(pods, " "))
	}
	if rest > 0 {
		d.ops.log().Info("waiting on more disruption budgets", "node", d.node, "budgets", len(whys)-reportBudgets, "pods", rest)
	}
	if len(byWhy) == 0 {
		d.ops.log().Info("waiting for evicted pods to terminate", "node", d.node, "left", left)
	}
}

// stillThere names the pods not gone and what holds each.
func (d *drainer) stillThere() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, pod := range d.remaining {
		why := d.waiting[pod]
		if why == "" {
			why = "evicted, still terminating"
		}
		out = append(out, pod+" ("+why+")")
	}
	sort.Strings(out)
	return fmt.Sprintf("%d pod(s) still on the node: %s", len(out), strings.Join(out, "; "))
}

// watchPods watches the node's pods (only them) and closes d.gone when every pod to
// evict is deleted.
func (d *drainer) watchPods(ctx context.Context, stop chan struct{}) error {
	f := informers.NewSharedInformerFactoryWithOptions(d.ops.Client, 0, informers.WithTransform(stripManagedFields), informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "spec.nodeName=" + d.node
	}))
	inf := f.Core().V1().Pods().Informer()
	d.pods = inf.GetStore()
	present := d.checkGone
	seen := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok && p.DeletionTimestamp != nil {
			d.mu.Lock()
			if _, ok := d.remaining[p.UID]; ok {
				d.deleted[p.UID] = *p.DeletionTimestamp
			}
			d.mu.Unlock()
		}
	}
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    seen,
		UpdateFunc: func(_, obj any) { seen(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				d.mu.Lock()
				delete(d.remaining, p.UID)
				d.mu.Unlock()
				present()
			}
		},
	})
	if err != nil {
		return fmt.Errorf("watch pods of %s: %w", d.node, err)
	}
	f.Start(stop)
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("watch pods of %s: %w", d.node, ctx.Err())
	}
	// Pods deleted before the watch started are gone too.
	d.mu.Lock()
	listed := map[types.UID]bool{}
	for _, obj := range inf.GetStore().List() {
		listed[obj.(*corev1.Pod).UID] = true
	}
	for uid := range d.remaining {
		if !listed[uid] {
			delete(d.remaining, uid)
		}
	}
	d.mu.Unlock()
	present()
	return nil
}

// budgetsChanged says that budgets came, went or changed their selectors. d.mu is held.
func (d *drainer) budgetsChanged() {
	d.setGen++
	close(d.setChanged)
	d.setChanged = make(chan struct{})
}

// watchPDBs watches the budgets of the namespaces of the pods and signals every change.
func (d *drainer) watchPDBs(ctx context.Context, pods []corev1.Pod, stop chan struct{}) error {
	if d.opts.DisableEviction {
		return nil
	}
	seen := map[string]bool{}
	var namespaces []string
	for _, p := range pods {
		if !seen[p.Namespace] {
			seen[p.Namespace] = true
			namespaces = append(namespaces, p.Namespace)
		}
	}
	handler := func(mine func(ns string) bool) cache.ResourceEventHandlerFuncs {
		update := func(obj any) {
			pdb, ok := obj.(*policyv1.PodDisruptionBudget)
			if !ok || !mine(pdb.Namespace) {
				return
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			k := pdb.Namespace + "/" + pdb.Name
			b := d.budgets[k]
			if b == nil || b.Generation != pdb.Generation {
				d.budgetsChanged()
			}
			if b == nil {
				b = &budget{changed: make(chan struct{})}
				d.budgets[k] = b
			}
			b.watchedPDB = newWatchedPDB(pdb)
			b.allowed = statusAllows(pdb)
			close(b.changed)
			b.changed = make(chan struct{})
		}
		return cache.ResourceEventHandlerFuncs{
			AddFunc:    update,
			UpdateFunc: func(_, obj any) { update(obj) },
			DeleteFunc: func(obj any) {
				if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
					obj = t.Obj
				}
				if pdb, ok := obj.(*policyv1.PodDisruptionBudget); ok && mine(pdb.Namespace) {
					d.mu.Lock()
					delete(d.budgets, pdb.Namespace+"/"+pdb.Name)
					d.budgetsChanged()
					d.mu.Unlock()
				}
			},
		}
	}
	if d.shared != nil {
		// The run's one watch of every budget: this drain listens to its namespaces'
		// budgets until it ends (the handler is first given every budget there is).
		reg, err := d.shared.AddEventHandler(handler(func(ns string) bool { return seen[ns] }))
		if err != nil {
			return fmt.Errorf("watch disruption budgets: %w", err)
		}
		go func() {
			<-stop
			_ = d.shared.RemoveEventHandler(reg)
		}()
		if !cache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
			return fmt.Errorf("watch disruption budgets: %w", ctx.Err())
		}
		return nil
	}
	for _, ns := range namespaces {
		f := informers.NewSharedInformerFactoryWithOptions(d.ops.Client, 0, informers.WithNamespace(ns), informers.WithTransform(stripManagedFields))
		inf := f.Policy().V1().PodDisruptionBudgets().Informer()
		if _, err := inf.AddEventHandler(handler(func(string) bool { return true })); err != nil {
			return fmt.Errorf("watch disruption budgets of %s: %w", ns, err)
		}
		f.Start(stop)
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			return fmt.Errorf("watch disruption budgets of %s: %w", ns, ctx.Err())
		}
	}
	return nil
}
