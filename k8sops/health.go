package k8sops

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

// GateOptions configure the health gate between the batches of a rolling job.
type GateOptions struct {
	// Handling are the nodes the run is handling now: they may be NotReady.
	Handling []string
	// Handled are the nodes the run has finished: their pods must be Running again.
	Handled []string
	// Window is how long the cluster must stay healthy without a break to pass the gate;
	// DefaultHealthWindow if zero.
	Window time.Duration
	// Timeout bounds the wait; 5 minutes if zero.
	Timeout time.Duration
}

// DefaultHealthWindow is how long the cluster must stay healthy to pass the gate when
// GateOptions.Window is zero.
const DefaultHealthWindow = 2 * time.Second

// The health rules, shared by the one-shot check (Health) and the watch (HealthWatch).

// nodeProblem says why a node fails the gate; "" if it does not.
func nodeProblem(n *corev1.Node) string {
	if IsReady(n) {
		return ""
	}
	return fmt.Sprintf("node %s is not Ready (%s)", n.Name, describeReady(n))
}

// pdbProblem says why a disruption budget fails the gate; "" if it does not: it has
// fewer healthy pods than it requires, or it allows no disruption while some of its pods
// are not healthy (their replacements are not up yet: the next drain would wait on it).
// A budget whose status is older than its spec is not judged.
func pdbProblem(p *policyv1.PodDisruptionBudget) string {
	st := p.Status
	if st.ObservedGeneration < p.Generation {
		return ""
	}
	if st.CurrentHealthy < st.DesiredHealthy || (st.DisruptionsAllowed == 0 && st.CurrentHealthy < st.ExpectedPods) {
		return fmt.Sprintf("PDB %s/%s allows %d disruption(s): %d of %d pod(s) healthy, needs %d", p.Namespace, p.Name,
			st.DisruptionsAllowed, st.CurrentHealthy, st.ExpectedPods, st.DesiredHealthy)
	}
	return ""
}

// podProblem says why a pod of a handled node fails the gate; "" if it does not.
func podProblem(p *corev1.Pod) string {
	if p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodRunning || p.Status.Phase == corev1.PodSucceeded {
		return ""
	}
	return fmt.Sprintf("pod %s/%s on %s is %s", p.Namespace, p.Name, p.Spec.NodeName, p.Status.Phase)
}

// Health checks the cluster once, with lists, and returns what is unhealthy (nothing:
// healthy): every node Ready except those being handled; no disruption budget short of
// healthy pods (pdbProblem); the pods of the handled nodes Running. A dry-run's gate uses
// it; a real gate watches (HealthWatch).
func (o *Ops) Health(ctx context.Context, opts GateOptions) ([]string, error) {
	var bad []string
	skip := map[string]bool{}
	for _, n := range opts.Handling {
		skip[n] = true
	}
	nodes, err := o.listNodes(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("health: list nodes: %w", err)
	}
	for i := range nodes {
		if why := nodeProblem(&nodes[i]); why != "" && !skip[nodes[i].Name] {
			bad = append(bad, why)
		}
	}
	pdbs, err := o.listPDBs(ctx, "", metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("health: list disruption budgets: %w", err)
	}
	for i := range pdbs {
		if why := pdbProblem(&pdbs[i]); why != "" {
			bad = append(bad, why)
		}
	}
	for _, node := range opts.Handled {
		pods, err := o.listPods(ctx, "", metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
		if err != nil {
			return nil, fmt.Errorf("health: list pods of %s: %w", node, err)
		}
		for i := range pods {
			if why := podProblem(&pods[i]); why != "" {
				bad = append(bad, why)
			}
		}
	}
	sort.Strings(bad)
	return bad, nil
}

// WaitHealthy waits until the cluster has been healthy for the window without a break,
// with a HealthWatch of its own. A job that passes many gates keeps one HealthWatch.
func (o *Ops) WaitHealthy(ctx context.Context, opts GateOptions) error {
	w, err := o.WatchHealth(ctx)
	if err != nil {
		return err
	}
	defer w.Stop()
	return w.Wait(ctx, opts)
}

// HealthWatch keeps what the health gate looks at up to date from watches (client-go
// informers): every node, every disruption budget, and the pods of the nodes a gate is
// told were handled (one informer per such node, field-selected to it, for that gate
// only). Each watch event is judged as it arrives, in order, so a node that turns
// NotReady and back inside the window restarts it even though it is Ready by the time
// the gate looks. One HealthWatch serves every gate of a run: start it once
// (Ops.WatchHealth), Stop it at the end. Wait may be called by one gate at a time.
type HealthWatch struct {
	ops     *Ops
	factory informers.SharedInformerFactory // nodes and disruption budgets
	nodes   cache.SharedIndexInformer
	pdbs    cache.SharedIndexInformer
	stop    chan struct{}
	once    sync.Once

	mu      sync.Mutex
	changed chan struct{}          // closed and replaced at every change of a problem
	bad     map[string]problem     // object key -> its problem now
	cleared map[string]problem     // object key -> when its last problem ended, and what it was
	pods    map[string]*podWatcher // node -> the watch of its pods
}

// problem is an object's reason to fail the gate. Keys are "node/NAME", "pdb/NS/NAME"
// and "pod/NODE/NS/NAME"; node names which node a problem belongs to.
type problem struct {
	why  string
	node string
	at   time.Time
}

type podWatcher struct {
	stop chan struct{} // closed to stop it
	done chan struct{} // closed once its informer has stopped: no event comes after
	inf  cache.SharedIndexInformer
}

// WatchHealth starts the watches of nodes and disruption budgets and returns once they
// have synced.
func (o *Ops) WatchHealth(ctx context.Context) (*HealthWatch, error) {
	w := &HealthWatch{ops: o, stop: make(chan struct{}), changed: make(chan struct{}),
		bad: map[string]problem{}, cleared: map[string]problem{}, pods: map[string]*podWatcher{}}
	f := informers.NewSharedInformerFactoryWithOptions(o.Client, 0, informers.WithTransform(stripManagedFields))
	nodes := f.Core().V1().Nodes().Informer()
	pdbs := f.Policy().V1().PodDisruptionBudgets().Informer()
	if _, err := nodes.AddEventHandler(w.handler(func(obj any) (string, problem) {
		n := obj.(*corev1.Node)
		return "node/" + n.Name, problem{why: nodeProblem(n), node: n.Name}
	})); err != nil {
		return nil, fmt.Errorf("health: watch nodes: %w", err)
	}
	if _, err := pdbs.AddEventHandler(w.handler(func(obj any) (string, problem) {
		p := obj.(*policyv1.PodDisruptionBudget)
		return "pdb/" + p.Namespace + "/" + p.Name, problem{why: pdbProblem(p)}
	})); err != nil {
		return nil, fmt.Errorf("health: watch disruption budgets: %w", err)
	}
	w.factory, w.nodes, w.pdbs = f, nodes, pdbs
	f.Start(w.stop)
	if !cache.WaitForCacheSync(ctx.Done(), nodes.HasSynced, pdbs.HasSynced) {
		w.Stop()
		return nil, fmt.Errorf("health: watch nodes and disruption budgets: %w", ctx.Err())
	}
	return w, nil
}

// stripManagedFields is the watches' transform: the objects they keep lose their
// managedFields (often half of an object's size), which nothing here reads.
func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.ObjectMetaAccessor); ok {
		m.GetObjectMeta().SetManagedFields(nil)
	}
	return obj, nil
}

// Drain is Ops.Drain reading and watching the disruption budgets through this watch
// (one watch of them for the whole run) instead of listing and watching them itself.
func (w *HealthWatch) Drain(ctx context.Context, node string, opts DrainOptions) error {
	return w.ops.drain(ctx, node, opts, w.pdbs)
}

// Nodes returns the nodes as the watch has them now (not to be modified).
func (w *HealthWatch) Nodes() []*corev1.Node {
	objs := w.nodes.GetStore().List()
	out := make([]*corev1.Node, 0, len(objs))
	for _, obj := range objs {
		out = append(out, obj.(*corev1.Node))
	}
	return out
}

// Stop ends every watch and waits for their goroutines. It may be called more than once.
func (w *HealthWatch) Stop() {
	w.once.Do(func() {
		close(w.stop)
		w.factory.Shutdown() // waits for the informers' goroutines
		w.mu.Lock()
		var nodes []string
		for node := range w.pods {
			nodes = append(nodes, node)
		}
		w.mu.Unlock()
		for _, node := range nodes {
			w.unwatchPods(node)
		}
	})
}

// handler judges each event's object with judge and records the change.
func (w *HealthWatch) handler(judge func(obj any) (string, problem)) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.record(judge(obj)) },
		UpdateFunc: func(_, obj any) { w.record(judge(obj)) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			key, _ := judge(obj)
			w.record(key, problem{}) // a deleted object has no problem left
		},
	}
}

// record sets the object's problem (none if why is empty). A problem that ends is kept
// in cleared with the time it ended: the window starts again from there.
func (w *HealthWatch) record(key string, p problem) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	old, wasBad := w.bad[key]
	switch {
	case p.why != "":
		if wasBad && old.why == p.why {
			return
		}
		p.at = now
		w.bad[key] = p
	case wasBad:
		delete(w.bad, key)
		w.cleared[key] = problem{why: old.why, node: old.node, at: now}
	default:
		return
	}
	close(w.changed)
	w.changed = make(chan struct{})
}

// watchPods starts the watch of the node's pods unless it runs, and returns its informer.
func (w *HealthWatch) watchPods(node string) (cache.SharedIndexInformer, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if pw, ok := w.pods[node]; ok {
		return pw.inf, nil
	}
	f := informers.NewSharedInformerFactoryWithOptions(w.ops.Client, 0, informers.WithTransform(stripManagedFields), informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "spec.nodeName=" + node
	}))
	inf := f.Core().V1().Pods().Informer()
	if _, err := inf.AddEventHandler(w.handler(func(obj any) (string, problem) {
		p := obj.(*corev1.Pod)
		return "pod/" + node + "/" + p.Namespace + "/" + p.Name, problem{why: podProblem(p), node: node}
	})); err != nil {
		return nil, fmt.Errorf("health: watch pods of %s: %w", node, err)
	}
	pw := &podWatcher{stop: make(chan struct{}), done: make(chan struct{}), inf: inf}
	w.pods[node] = pw
	f.Start(pw.stop)
	go func() {
		defer close(pw.done)
		<-pw.stop
		f.Shutdown() // waits for the informer's goroutines
	}()
	return inf, nil
}

// unwatchPods stops the watch of the node's pods and forgets their problems.
func (w *HealthWatch) unwatchPods(node string) {
	w.mu.Lock()
	pw, ok := w.pods[node]
	delete(w.pods, node)
	w.mu.Unlock()
	if !ok {
		return
	}
	close(pw.stop)
	<-pw.done
	w.mu.Lock()
	defer w.mu.Unlock()
	prefix := "pod/" + node + "/"
	for key := range w.bad {
		if strings.HasPrefix(key, prefix) {
			delete(w.bad, key)
		}
	}
	for key := range w.cleared {
		if strings.HasPrefix(key, prefix) {
			delete(w.cleared, key)
		}
	}
}

// state returns, for a gate that started at start, what is unhealthy now and since when
// the cluster has been healthy without a break (when nothing is unhealthy), with the last
// problem that ended, and the channel closed at the next change.
func (w *HealthWatch) state(opts GateOptions, start time.Time) (bad []string, since time.Time, last string, changed chan struct{}) {
	skip, handled := map[string]bool{}, map[string]bool{}
	for _, n := range opts.Handling {
		skip[n] = true
	}
	for _, n := range opts.Handled {
		handled[n] = true
	}
	counts := func(key string, p problem) bool {
		switch {
		case strings.HasPrefix(key, "node/"):
			return !skip[p.node]
		case strings.HasPrefix(key, "pod/"):
			return handled[p.node]
		}
		return true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for key, p := range w.bad {
		if counts(key, p) {
			bad = append(bad, p.why)
		}
	}
	since = start
	for key, p := range w.cleared {
		if counts(key, p) && p.at.After(since) {
			since, last = p.at, p.why
		}
	}
	sort.Strings(bad)
	return bad, since, last, w.changed
}

// Wait waits until the cluster has been healthy for the window without a break: every
// node Ready except those being handled, no disruption budget short of healthy pods, the
// pods of the handled nodes Running or Succeeded. It is woken by the watches' events
// only, so it costs the window when the cluster is healthy. On timeout the error names
// what is still unhealthy, or what last broke the window.
func (w *HealthWatch) Wait(ctx context.Context, opts GateOptions) error {
	window := opts.Window
	if window <= 0 {
		window = DefaultHealthWindow
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	var synced []cache.InformerSynced
	for _, node := range opts.Handled {
		inf, err := w.watchPods(node)
		if err != nil {
			return err
		}
		defer w.unwatchPods(node)
		synced = append(synced, inf.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return w.failed(ctx, opts, start, window, timeout)
	}
	report := time.NewTicker(w.ops.reportEvery())
	defer report.Stop()
	timer := time.NewTimer(window)
	defer timer.Stop()
	for {
		bad, since, _, changed := w.state(opts, start)
		if len(bad) == 0 {
			left := window - time.Since(since)
			if left <= 0 {
				w.ops.log().Info("cluster healthy", "for", window)
				return nil
			}
			timer.Reset(left)
		}
		select {
		case <-ctx.Done():
			return w.failed(ctx, opts, start, window, timeout)
		case <-changed:
		case <-timer.C:
		case <-report.C:
			if len(bad) > 0 {
				w.ops.log().Info("waiting for the cluster to be healthy", "unhealthy", strings.Join(bad, "; "))
			}
		}
	}
}

// failed is Wait's error when its context ended: interrupted, or timed out naming what
// is unhealthy.
func (w *HealthWatch) failed(ctx context.Context, opts GateOptions, start time.Time, window, timeout time.Duration) error {
	if ctx.Err() != context.DeadlineExceeded {
		return fmt.Errorf("health gate: %w", ctx.Err())
	}
	bad, since, last, _ := w.state(opts, start)
	if len(bad) == 0 && last != "" {
		bad = []string{fmt.Sprintf("not healthy for %s without a break: last %s until %s", window, last, since.Format(time.TimeOnly))}
	}
	if len(bad) == 0 {
		bad = []string{fmt.Sprintf("healthy for less than %s", window)}
	}
	return fmt.Errorf("health gate: %w after %s: %s", ErrTimeout, timeout, strings.Join(bad, "; "))
}
