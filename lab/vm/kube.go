package vm

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/lab"
)

// KubeCluster is the Cluster of a lab control plane: the real kubeadm binary for the
// commands that need no kubelet (bootstrap tokens, upload-certs), kwok-managed Nodes.
type KubeCluster struct {
	CP *lab.ControlPlane
	// KubeletVersion is what joined nodes report; the lab's version if empty.
	KubeletVersion string
}

var (
	_ Cluster              = (*KubeCluster)(nil)
	_ ControlPlaneVersions = (*KubeCluster)(nil)
)

// ClusterVersion is the control plane's version as kubeadm records it.
func (k *KubeCluster) ClusterVersion(ctx context.Context) (string, error) {
	return k.CP.ClusterVersion(ctx)
}

// SetClusterVersion records the control plane's version as kubeadm does.
func (k *KubeCluster) SetClusterVersion(ctx context.Context, ver string) error {
	return k.CP.SetClusterVersion(ctx, ver)
}

// SetStaticPods makes the node's control-plane static pods run ver.
func (k *KubeCluster) SetStaticPods(ctx context.Context, node, ver string) error {
	return k.CP.SetStaticPods(ctx, node, ver)
}

// Kubeadm runs the lab's real kubeadm binary for a control VM.
func (k *KubeCluster) Kubeadm(ctx context.Context, node, address string, args []string, stdout, stderr io.Writer) (int, error) {
	return k.CP.Kubeadm(ctx, lab.KubeadmRun{Node: node, Address: address, Args: args, Stdout: stdout, Stderr: stderr})
}

// DownloadCerts checks the certificate key against the kubeadm-certs Secret.
func (k *KubeCluster) DownloadCerts(ctx context.Context, key string) error {
	return k.CP.DownloadCerts(ctx, key, time.Now())
}

// Join checks the token against the bootstrap token Secrets and registers the Node.
func (k *KubeCluster) Join(ctx context.Context, j JoinRequest) error {
	node := j.Node
	id, secret, ok := strings.Cut(j.Token, ".")
	if !ok {
		return fmt.Errorf("token %q is not of the form [a-z0-9]{6}.[a-z0-9]{16}", "******")
	}
	// What the API server's bootstrap token authenticator checks, on the Secret kubeadm
	// token create wrote.
	s, err := k.CP.Client.CoreV1().Secrets("kube-system").Get(ctx, "bootstrap-token-"+id, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("bootstrap token %s: %w", id, err)
	}
	if s.Type != "bootstrap.kubernetes.io/token" || string(s.Data["token-id"]) != id || string(s.Data["token-secret"]) != secret {
		return fmt.Errorf("bootstrap token %s: wrong secret", id)
	}
	if string(s.Data["usage-bootstrap-authentication"]) != "true" {
		return fmt.Errorf("bootstrap token %s is not usable for authentication", id)
	}
	if exp, err := time.Parse(time.RFC3339, string(s.Data["expiration"])); err == nil && time.Now().After(exp) {
		return fmt.Errorf("bootstrap token %s expired at %s", id, exp)
	}
	kv := k.KubeletVersion
	if j.KubeletVersion != "" {
		kv = j.KubeletVersion
	}
	spec := lab.NodeSpec{Name: node, KubeletVersion: kv, Address: j.Address, BootID: j.BootID}
	if j.ControlPlane {
		spec.Labels = map[string]string{"node-role.kubernetes.io/control-plane": ""}
		spec.Taints = []corev1.Taint{{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule}}
	}
	// kubeadm's kubelet-start phase refuses to join over a Ready Node of the name (one
	// NotReady is taken over by the new kubelet).
	if _, ready, err := k.Node(ctx, node); err != nil {
		return fmt.Errorf("cannot get Node %q: %w", node, err)
	} else if ready {
		return &NodeReadyError{Node: node}
	}
	n := lab.NewNode(spec)
	if _, err := k.CP.Client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("register node %s: %w", node, err)
	}
	return nil
}

// KubeletDown makes the node NotReady, if it is registered.
func (k *KubeCluster) KubeletDown(ctx context.Context, node string) error {
	err := k.CP.SetNodeNotReady(ctx, node)
	if err != nil && strings.Contains(err.Error(), "not found") {
		return nil
	}
	return err
}

// KubeletUp makes the node Ready with the boot id, if it is registered.
func (k *KubeCluster) KubeletUp(ctx context.Context, node, bootID string) error {
	err := k.CP.SetNodeReady(ctx, node, bootID)
	if err != nil && strings.Contains(err.Error(), "not found") {
		return nil
	}
	return err
}

// SetKubeletVersion makes the Node report kubelet version ver, as a kubelet of that
// version does when it starts.
func (k *KubeCluster) SetKubeletVersion(ctx context.Context, node, ver string) error {
	patch := fmt.Sprintf(`{"status":{"nodeInfo":{"kubeletVersion":%q}}}`, ver)
	if _, err := k.CP.Client.CoreV1().Nodes().PatchStatus(ctx, node, []byte(patch)); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("node %s kubelet version: %w", node, err)
	}
	return nil
}

// Node reports whether the Node exists and is Ready.
func (k *KubeCluster) Node(ctx context.Context, name string) (exists, ready bool, err error) {
	n, err := k.CP.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, false, nil
	}
	if err != nil {
		return false, false, fmt.Errorf("get node %s: %w", name, err)
	}
	return true, lab.IsReady(n), nil
}

// NotReadyControlPlanes lists the control-plane Nodes whose Ready condition is not True,
// as kubeadm's upgrade health check (controlPlaneNodesReady) does.
func (k *KubeCluster) NotReadyControlPlanes(ctx context.Context) ([]string, error) {
	nodes, err := k.CP.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: "node-role.kubernetes.io/control-plane="})
	if err != nil {
		return nil, fmt.Errorf("could not list nodes labeled with %q: %w", "node-role.kubernetes.io/control-plane", err)
	}
	var out []string
	for _, n := range nodes.Items {
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue {
				out = append(out, n.Name)
			}
		}
	}
	return out, nil
}
