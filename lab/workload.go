package lab

import (
	"context"
	"fmt"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
)

// SampleWorkload describes what ApplySampleWorkload creates, for tests to assert on.
var SampleWorkload = struct {
	Deployments map[string]int32 // name -> replicas
	PDBs        []string
	DaemonSet   string
	EmptyDirPod string // a Deployment whose pods use an emptyDir volume
	BarePod     string
	StatefulSet string
}{
	Deployments: map[string]int32{"web": 4, "api": 3, "cache": 2},
	PDBs:        []string{"web", "api"},
	DaemonSet:   "node-agent",
	EmptyDirPod: "cache",
	BarePod:     "debug-shell",
	StatefulSet: "db",
}

// ApplySampleWorkload creates, in namespace (created if missing), what makes a drain
// realistic: Deployments with PodDisruptionBudgets (web: maxUnavailable 1; api:
// minAvailable 2), a Deployment whose pods use an emptyDir volume (cache), a DaemonSet
// (node-agent), a bare pod without a controller (debug-shell) and a StatefulSet (db).
func (cp *ControlPlane) ApplySampleWorkload(ctx context.Context, namespace string) error {
	c := cp.Client
	create := func(what string, err error) error {
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("sample workload: create %s: %w", what, err)
		}
		return nil
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if _, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); create("namespace", err) != nil {
		return create("namespace", err)
	}
	for _, name := range []string{"web", "api", "cache"} {
		d := Deployment(namespace, name, SampleWorkload.Deployments[name])
		if name == "cache" {
			d.Spec.Template.Spec.Volumes = []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
		}
		if _, err := c.AppsV1().Deployments(namespace).Create(ctx, d, metav1.CreateOptions{}); create("deployment "+name, err) != nil {
			return create("deployment "+name, err)
		}
	}
	one, two := intstr.FromInt32(1), intstr.FromInt32(2)
	pdbs := []*policyv1.PodDisruptionBudget{
		PDB(namespace, "web", &one, nil),
		PDB(namespace, "api", nil, &two),
	}
	for _, p := range pdbs {
		if _, err := c.PolicyV1().PodDisruptionBudgets(namespace).Create(ctx, p, metav1.CreateOptions{}); create("pdb "+p.Name, err) != nil {
			return create("pdb "+p.Name, err)
		}
	}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: SampleWorkload.DaemonSet, Namespace: namespace},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": SampleWorkload.DaemonSet}},
			Template: podTemplate(SampleWorkload.DaemonSet),
		},
	}
	ds.Spec.Template.Spec.Tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists}}
	if _, err := c.AppsV1().DaemonSets(namespace).Create(ctx, ds, metav1.CreateOptions{}); create("daemonset", err) != nil {
		return create("daemonset", err)
	}
	bare := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: SampleWorkload.BarePod, Namespace: namespace, Labels: map[string]string{"app": SampleWorkload.BarePod}}, Spec: podTemplate(SampleWorkload.BarePod).Spec}
	if _, err := c.CoreV1().Pods(namespace).Create(ctx, bare, metav1.CreateOptions{}); create("bare pod", err) != nil {
		return create("bare pod", err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: SampleWorkload.StatefulSet, Namespace: namespace},
		Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"app": SampleWorkload.StatefulSet}, Ports: []corev1.ServicePort{{Port: 5432}}},
	}
	if _, err := c.CoreV1().Services(namespace).Create(ctx, svc, metav1.CreateOptions{}); create("service", err) != nil {
		return create("service", err)
	}
	replicas := int32(2)
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: SampleWorkload.StatefulSet, Namespace: namespace},
		Spec: appsv1.StatefulSetSpec{
			Replicas:    &replicas,
			ServiceName: SampleWorkload.StatefulSet,
			Selector:    &metav1.LabelSelector{MatchLabels: map[string]string{"app": SampleWorkload.StatefulSet}},
			Template:    podTemplate(SampleWorkload.StatefulSet),
		},
	}
	if _, err := c.AppsV1().StatefulSets(namespace).Create(ctx, sts, metav1.CreateOptions{}); create("statefulset", err) != nil {
		return create("statefulset", err)
	}
	return nil
}

// Deployment returns a Deployment of replicas pods labelled app=name.
func Deployment(namespace, name string, replicas int32) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: podTemplate(name),
		},
	}
}

// PDB returns a PodDisruptionBudget selecting app=name.
func PDB(namespace, name string, maxUnavailable, minAvailable *intstr.IntOrString) *policyv1.PodDisruptionBudget {
	return &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: policyv1.PodDisruptionBudgetSpec{
			Selector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			MaxUnavailable: maxUnavailable,
			MinAvailable:   minAvailable,
		},
	}
}

func podTemplate(app string) corev1.PodTemplateSpec {
	grace := int64(1)
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			Containers:                    []corev1.Container{{Name: app, Image: "registry.k8s.io/pause:3.10"}},
			// Only the lab's simulated nodes run pods.
			Affinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "type", Operator: corev1.NodeSelectorOpIn, Values: []string{"kwok"}}}}},
			}}},
		},
	}
}

// Workload is a fleet of Deployments, each with a PodDisruptionBudget of MaxUnavailable,
// spread by the scheduler over the nodes: what a cluster of hundreds of nodes runs.
type Workload struct {
	Namespace      string
	Deployments    int
	Replicas       int32
	MaxUnavailable int32
	// PerNamespace, if more than zero, spreads the Deployments over namespaces of that
	// many each, Namespace-000, Namespace-001, ..., as a cluster of many teams or tools
	// (Toolforge: a namespace per tool) has them; zero puts them all in Namespace. The API
	// server reads every budget of a pod's namespace at each eviction: a single namespace
	// of hundreds of budgets makes evictions cost what no such cluster pays.
	PerNamespace int
}

// Name is the name of the workload's i-th Deployment and of its PDB (app=Name).
func (w Workload) Name(i int) string { return fmt.Sprintf("app-%03d", i) }

// NamespaceOf is the namespace of the workload's i-th Deployment.
func (w Workload) NamespaceOf(i int) string {
	if w.PerNamespace <= 0 {
		return w.Namespace
	}
	return fmt.Sprintf("%s-%03d", w.Namespace, i/w.PerNamespace)
}

// Namespaces are the workload's namespaces.
func (w Workload) Namespaces() []string {
	var out []string
	for i := 0; i < w.Deployments; i++ {
		if ns := w.NamespaceOf(i); len(out) == 0 || out[len(out)-1] != ns {
			out = append(out, ns)
		}
	}
	return out
}

// Pods is how many pods the workload runs.
func (w Workload) Pods() int { return w.Deployments * int(w.Replicas) }

// ApplyWorkload creates the workload's namespace, Deployments and PDBs (16 requests at a
// time), and returns without waiting for the pods (WaitWorkload).
func (cp *ControlPlane) ApplyWorkload(ctx context.Context, w Workload) error {
	c := cp.Client
	for _, name := range w.Namespaces() {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
		if _, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("workload: create namespace %s: %w", name, err)
		}
	}
	maxUnavailable := intstr.FromInt32(w.MaxUnavailable)
	errs := make(chan error, w.Deployments)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := 0; i < w.Deployments; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			name, ns := w.Name(i), w.NamespaceOf(i)
			if _, err := c.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, PDB(ns, name, &maxUnavailable, nil), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				errs <- fmt.Errorf("workload: create pdb %s: %w", name, err)
				return
			}
			if _, err := c.AppsV1().Deployments(ns).Create(ctx, Deployment(ns, name, w.Replicas), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				errs <- fmt.Errorf("workload: create deployment %s: %w", name, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs // nil when none failed
}

// WaitWorkload waits until every Deployment of the workload has all its replicas ready
// and every PDB has counted them healthy, reporting progress to report (may be nil).
func (cp *ControlPlane) WaitWorkload(ctx context.Context, w Workload, timeout time.Duration, report func(ready int)) error {
	last := -1
	err := wait.PollUntilContextTimeout(ctx, time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		ready := 0
		for _, ns := range w.Namespaces() {
			deps, err := cp.Client.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, err
			}
			for _, d := range deps.Items {
				ready += int(min(d.Status.ReadyReplicas, *d.Spec.Replicas))
			}
		}
		if report != nil && ready != last {
			report(ready)
			last = ready
		}
		if ready < w.Pods() {
			return false, nil
		}
		budgets := 0
		for _, ns := range w.Namespaces() {
			pdbs, err := cp.Client.PolicyV1().PodDisruptionBudgets(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, err
			}
			for _, p := range pdbs.Items {
				if p.Status.ObservedGeneration < p.Generation || p.Status.CurrentHealthy < w.Replicas {
					return false, nil
				}
			}
			budgets += len(pdbs.Items)
		}
		return budgets == w.Deployments, nil
	})
	if err != nil {
		return fmt.Errorf("workload %s: wait for %d pods: %w", w.Namespace, w.Pods(), err)
	}
	return nil
}

// DeleteNamespace deletes a namespace and waits until it is gone (the namespace controller
// has deleted what it held): a test's workload left half-deleted (Deployments whose pods
// cannot be placed, PDBs at zero) would fail a later test's cluster-wide health gate.
func (cp *ControlPlane) DeleteNamespace(ctx context.Context, name string, timeout time.Duration) error {
	err := cp.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete namespace %s: %w", name, err)
	}
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		_, err := cp.Client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		return fmt.Errorf("delete namespace %s: still there after %s: %w", name, timeout, err)
	}
	return nil
}
