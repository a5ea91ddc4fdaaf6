package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
)

// KwokAnnotation marks the Nodes kwok manages: it keeps them Ready and runs their pods.
const KwokAnnotation = "kwok.x-k8s.io/node"

// NodeSpec describes a simulated node.
type NodeSpec struct {
	Name          string
	Labels        map[string]string
	Taints        []corev1.Taint
	Unschedulable bool
	// Pods is the node's pod capacity; 110 if zero.
	Pods int
	// KubeletVersion is reported in status.nodeInfo; the lab's Kubernetes version if empty.
	KubeletVersion string
	// Address is the node's InternalIP, if any.
	Address string
	// BootID is reported in status.nodeInfo; a random one if empty.
	BootID string
}

// NewBootID returns a random boot id in the kernel's format.
func NewBootID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return fmt.Sprintf("%s-%s-%s-%s-%s", h[0:8], h[8:12], h[12:16], h[16:20], h[20:32])
}

// AddNode registers a kwok-managed Node and returns once it is Ready.
func (cp *ControlPlane) AddNode(ctx context.Context, spec NodeSpec) error {
	node := NewNode(spec)
	if _, err := cp.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("add node %s: %w", spec.Name, err)
	}
	if err := cp.WaitNodeReady(ctx, spec.Name, true, 30*time.Second); err != nil {
		return fmt.Errorf("add node %s: %w", spec.Name, err)
	}
	return nil
}

// NewNode returns the Node object a kubelet of this spec would register.
func NewNode(spec NodeSpec) *corev1.Node {
	pods := spec.Pods
	if pods == 0 {
		pods = 110
	}
	bootID := spec.BootID
	if bootID == "" {
		bootID = NewBootID()
	}
	version := spec.KubeletVersion
	if version == "" {
		version = PinnedVersions().Kubernetes
	}
	labels := map[string]string{
		"kubernetes.io/hostname": spec.Name,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     "amd64",
		"type":                   "kwok",
	}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("32"),
		corev1.ResourceMemory: resource.MustParse("256Gi"),
		corev1.ResourcePods:   *resource.NewQuantity(int64(pods), resource.DecimalSI),
	}
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: spec.Name, Labels: labels, Annotations: map[string]string{KwokAnnotation: "fake"}},
		Spec:       corev1.NodeSpec{Taints: spec.Taints, Unschedulable: spec.Unschedulable},
		Status: corev1.NodeStatus{
			Capacity:    capacity,
			Allocatable: capacity,
			NodeInfo: corev1.NodeSystemInfo{
				BootID:          bootID,
				KubeletVersion:  version,
				OperatingSystem: "linux",
				Architecture:    "amd64",
				OSImage:         "Debian GNU/Linux 12 (bookworm)",
			},
		},
	}
	if spec.Address != "" {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: spec.Address}, {Type: corev1.NodeHostName, Address: spec.Name}}
	}
	return n
}

// RemoveNode deletes the Node (a no-op if it is gone).
func (cp *ControlPlane) RemoveNode(ctx context.Context, name string) error {
	cp.cancelReboot(name)
	err := cp.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("remove node %s: %w", name, err)
	}
	return nil
}

// RebootNode simulates a kubelet going down with its host: the node turns NotReady now and,
// after down, Ready again with a new status.nodeInfo.bootID. It returns at once.
func (cp *ControlPlane) RebootNode(ctx context.Context, name string, down time.Duration) error {
	return cp.RebootNodeTo(ctx, name, down, NewBootID())
}

// RebootNodeTo is RebootNode with the boot id the node reports when it is back (a
// simulated VM passes its own).
func (cp *ControlPlane) RebootNodeTo(ctx context.Context, name string, down time.Duration, bootID string) error {
	if err := cp.SetNodeNotReady(ctx, name); err != nil {
		return err
	}
	cp.mu.Lock()
	if cancel, ok := cp.reboots[name]; ok {
		cancel()
	}
	rctx, cancel := context.WithCancel(cp.bgCtx)
	cp.reboots[name] = cancel
	cp.mu.Unlock()
	cp.bg.Add(1)
	go func() {
		defer cp.bg.Done()
		t := time.NewTimer(down)
		defer t.Stop()
		select {
		case <-rctx.Done():
			return
		case <-t.C:
		}
		// The caller's ctx may be gone by now; the lab's own lifetime bounds this.
		_ = cp.SetNodeReady(rctx, name, bootID)
	}()
	return nil
}

func (cp *ControlPlane) cancelReboot(name string) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cancel, ok := cp.reboots[name]; ok {
		cancel()
		delete(cp.reboots, name)
	}
}

// KubeletDownFinalizer is the finalizer the lab puts on the pods of a node whose kubelet
// is down: their deletion starts (a deletionTimestamp) but does not finish, as on a real
// node whose kubelet is not there to confirm it (kwok, which would finish it, does not
// tell a down node from a live one). It goes when the kubelet is back or the Node is
// deleted (the pod garbage collector then force-deletes the pods of a node that is gone).
const KubeletDownFinalizer = "lab.cookbook.example/kubelet-down"

// holdPods puts (hold) or takes away (!hold) KubeletDownFinalizer on every pod bound to
// the node.
func (cp *ControlPlane) holdPods(ctx context.Context, node string, hold bool) error {
	pods, err := cp.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return fmt.Errorf("pods of node %s: %w", node, err)
	}
	for _, p := range pods.Items {
		if slices.Contains(p.Finalizers, KubeletDownFinalizer) == hold {
			continue
		}
		patch := fmt.Sprintf(`{"metadata":{"finalizers":[%q]}}`, KubeletDownFinalizer)
		if !hold {
			patch = fmt.Sprintf(`{"metadata":{"$deleteFromPrimitiveList/finalizers":[%q]}}`, KubeletDownFinalizer)
		}
		_, err := cp.Client.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("pod %s/%s of node %s: %w", p.Namespace, p.Name, node, err)
		}
	}
	return nil
}

// watchNodeDeletions, started once, releases the pods of a Node that is deleted (see
// KubeletDownFinalizer).
func (cp *ControlPlane) watchNodeDeletions() {
	cp.watchOnce.Do(func() {
		f := informers.NewSharedInformerFactory(cp.Client, 0)
		inf := f.Core().V1().Nodes().Informer()
		_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if n, ok := obj.(*corev1.Node); ok {
				cp.bg.Add(1)
				go func() {
					defer cp.bg.Done()
					ctx, cancel := context.WithTimeout(cp.bgCtx, 30*time.Second)
					defer cancel()
					_ = cp.holdPods(ctx, n.Name, false)
				}()
			}
		}})
		f.Start(cp.bgCtx.Done())
		cp.bg.Add(1)
		go func() {
			defer cp.bg.Done()
			<-cp.bgCtx.Done()
			f.Shutdown()
		}()
	})
}

// SetNodeNotReady makes the node report NotReady, as when its kubelet stops: kwok stops
// managing it (its annotation is removed), its Ready condition turns False, and the
// deletion of its pods no longer finishes (KubeletDownFinalizer). kwok may still be
// acting on the node for a moment, so the condition is set until it holds.
func (cp *ControlPlane) SetNodeNotReady(ctx context.Context, name string) error {
	cp.watchNodeDeletions()
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:null}}}`, KwokAnnotation)
	if _, err := cp.Client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("node %s not ready: %w", name, err)
	}
	if err := cp.holdPods(ctx, name, true); err != nil {
		return fmt.Errorf("node %s not ready: %w", name, err)
	}
	for attempt := 0; attempt < 20; attempt++ {
		if err := cp.patchReady(ctx, name, corev1.ConditionFalse, "KubeletNotReady", "kubelet is rebooting", ""); err != nil {
			return err
		}
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return err
		}
		n, err := cp.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("node %s not ready: %w", name, err)
		}
		if !IsReady(n) {
			return nil
		}
	}
	return fmt.Errorf("node %s not ready: kwok kept it Ready", name)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// SetNodeReady makes the node report Ready with the given boot id, and gives it back to
// kwok, which finishes the deletions started while it was down.
func (cp *ControlPlane) SetNodeReady(ctx context.Context, name, bootID string) error {
	if err := cp.holdPods(ctx, name, false); err != nil {
		return fmt.Errorf("node %s ready: %w", name, err)
	}
	if err := cp.patchReady(ctx, name, corev1.ConditionTrue, "KubeletReady", "kubelet is posting ready status", bootID); err != nil {
		return err
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"fake"}}}`, KwokAnnotation)
	if _, err := cp.Client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("node %s ready: %w", name, err)
	}
	cp.bg.Add(1)
	go func() {
		defer cp.bg.Done()
		cp.resyncPodStatus(name, bootID)
	}()
	return nil
}

// resyncPodStatus does for a node back from a reboot what its kubelet's status manager
// does: the node lifecycle controller marks the pods of a NotReady node not Ready
// (MarkPodsNotReady), and a controller lagging behind may do it after the node is Ready
// again; a real kubelet puts its own status back at its next sync (every 10 s), kwok,
// which set the pods Ready once, does not. For resyncFor after the node is back, every
// resyncEvery, while the node stays Ready on this boot, a running pod whose containers
// are ready but which is marked not Ready gets its Ready condition back.
func (cp *ControlPlane) resyncPodStatus(name, bootID string) {
	ctx, cancel := context.WithTimeout(cp.bgCtx, resyncFor)
	defer cancel()
	for sleep(ctx, resyncEvery) == nil {
		n, err := cp.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil || !IsReady(n) || (bootID != "" && n.Status.NodeInfo.BootID != bootID) {
			return // gone, down again, or rebooted since: that boot's resync takes over
		}
		pods, err := cp.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + name})
		if err != nil {
			continue
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || !markedNotReady(&p) {
				continue
			}
			data, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.PodCondition{{
				Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now(),
			}}}})
			if err != nil {
				continue
			}
			// Best effort, as the kubelet's: the next round tries again.
			_, _ = cp.Client.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.StrategicMergePatchType, data, metav1.PatchOptions{}, "status")
		}
	}
}

// How long and how often resyncPodStatus looks after a node is back.
const (
	resyncFor   = 90 * time.Second
	resyncEvery = 3 * time.Second
)

// markedNotReady reports whether the pod's containers are ready but the pod is not: what
// the node lifecycle controller leaves on the pods of a node it saw NotReady.
func markedNotReady(p *corev1.Pod) bool {
	ready, containers := false, false
	for _, c := range p.Status.Conditions {
		switch c.Type {
		case corev1.PodReady:
			ready = c.Status == corev1.ConditionTrue
		case corev1.ContainersReady:
			containers = c.Status == corev1.ConditionTrue
		}
	}
	return containers && !ready
}

func (cp *ControlPlane) patchReady(ctx context.Context, name string, status corev1.ConditionStatus, reason, msg, bootID string) error {
	now := metav1.Now()
	st := map[string]any{
		"conditions": []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: status, Reason: reason, Message: msg,
			LastHeartbeatTime: now, LastTransitionTime: now,
		}},
	}
	if bootID != "" {
		st["nodeInfo"] = map[string]string{"bootID": bootID}
	}
	data, err := json.Marshal(map[string]any{"status": st})
	if err != nil {
		return err
	}
	// A strategic merge patch merges conditions by type, keeping the others.
	if _, err := cp.Client.CoreV1().Nodes().PatchStatus(ctx, name, data); err != nil {
		return fmt.Errorf("patch status of node %s: %w", name, err)
	}
	return nil
}

// WaitNodeReady waits until the node's Ready condition is (ready) or is not (!ready) True.
func (cp *ControlPlane) WaitNodeReady(ctx context.Context, name string, ready bool, timeout time.Duration) error {
	err := cp.waitNode(ctx, name, timeout, func(n *corev1.Node) bool { return IsReady(n) == ready })
	if err != nil {
		return fmt.Errorf("wait for node %s ready=%v: %w", name, ready, err)
	}
	return nil
}

// waitNode watches the node until cond holds.
func (cp *ControlPlane) waitNode(ctx context.Context, name string, timeout time.Duration, cond func(*corev1.Node) bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	lw := &listWatch{cp: cp, sel: fields.OneTermEqualSelector("metadata.name", name).String()}
	_, err := watchtools.UntilWithSync(ctx, lw, &corev1.Node{}, nil, func(ev watch.Event) (bool, error) {
		n, ok := ev.Object.(*corev1.Node)
		return ok && cond(n), nil
	})
	return err
}

// IsReady reports whether the node's Ready condition is True.
func IsReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
