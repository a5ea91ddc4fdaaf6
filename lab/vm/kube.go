package vm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"example.com/cookbook/lab"
)

// KubeCluster is the Cluster of a lab control plane: real bootstrap token Secrets and
// kwok-managed Nodes.
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

func randomString(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// JoinCommand creates a bootstrap token Secret, as `kubeadm token create` does, and
// returns the join command.
func (k *KubeCluster) JoinCommand(ctx context.Context) (string, error) {
	id, secret := randomString(6), randomString(16)
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-" + id, Namespace: "kube-system"},
		Type:       "bootstrap.kubernetes.io/token",
		StringData: map[string]string{
			"token-id": id, "token-secret": secret,
			"expiration":                     time.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339),
			"usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
			"auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token",
		},
	}
	if _, err := k.CP.Client.CoreV1().Secrets("kube-system").Create(ctx, s, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("create bootstrap token: %w", err)
	}
	host := "127.0.0.1:6443"
	if u, err := url.Parse(k.CP.RESTConfig.Host); err == nil {
		host = u.Host
	}
	sum := sha256.Sum256(k.CP.RESTConfig.CAData)
	return fmt.Sprintf("kubeadm join %s --token %s.%s --discovery-token-ca-cert-hash sha256:%s", host, id, secret, hex.EncodeToString(sum[:])), nil
}

// Tokens lists the bootstrap token Secrets.
func (k *KubeCluster) Tokens(ctx context.Context) ([]Token, error) {
	list, err := k.CP.Client.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{FieldSelector: "type=bootstrap.kubernetes.io/token"})
	if err != nil {
		return nil, fmt.Errorf("list bootstrap tokens: %w", err)
	}
	var out []Token
	for _, s := range list.Items {
		t := Token{ID: string(s.Data["token-id"]), Secret: string(s.Data["token-secret"])}
		t.Expires, _ = time.Parse(time.RFC3339, string(s.Data["expiration"]))
		out = append(out, t)
	}
	return out, nil
}

// DeleteToken deletes the bootstrap token Secret of an id.
func (k *KubeCluster) DeleteToken(ctx context.Context, id string) error {
	err := k.CP.Client.CoreV1().Secrets("kube-system").Delete(ctx, "bootstrap-token-"+id, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%w: %v", ErrNoToken, err)
	}
	return err
}

// Join checks the token against the bootstrap token Secrets and registers the Node.
func (k *KubeCluster) Join(ctx context.Context, j JoinRequest) error {
	node := j.Node
	id, secret, ok := strings.Cut(j.Token, ".")
	if !ok {
		return fmt.Errorf("token %q is not of the form [a-z0-9]{6}.[a-z0-9]{16}", "******")
	}
	s, err := k.CP.Client.CoreV1().Secrets("kube-system").Get(ctx, "bootstrap-token-"+id, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("bootstrap token %s: %w", id, err)
	}
	if string(s.Data["token-secret"]) != secret {
		return fmt.Errorf("bootstrap token %s: wrong secret", id)
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
