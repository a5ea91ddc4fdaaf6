package k8sops

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var kubernetesVersionRE = regexp.MustCompile(`(?m)^kubernetesVersion:\s*(\S+)\s*$`)

// ClusterVersion is the control plane's version as kubeadm records it: the
// ClusterConfiguration's kubernetesVersion in the kubeadm-config ConfigMap of
// kube-system ("v1.37.2").
func (o *Ops) ClusterVersion(ctx context.Context) (string, error) {
	cm, err := o.Client.CoreV1().ConfigMaps("kube-system").Get(ctx, "kubeadm-config", metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read kube-system/kubeadm-config: %w", err)
	}
	m := kubernetesVersionRE.FindStringSubmatch(cm.Data["ClusterConfiguration"])
	if m == nil {
		return "", fmt.Errorf("kube-system/kubeadm-config: no ClusterConfiguration kubernetesVersion")
	}
	return m[1], nil
}

// ControlPlaneComponents are the control-plane components kubeadm runs as static pods
// on every control node (etcd aside).
var ControlPlaneComponents = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"}

// StaticPods are the versions (image tags) of the control-plane static pods running on
// a node, by component, read from their mirror pods in kube-system; a component whose
// pod is missing or not Running is absent.
func (o *Ops) StaticPods(ctx context.Context, node string) (map[string]string, error) {
	pods, err := o.listPods(ctx, "kube-system", metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return nil, fmt.Errorf("static pods of %s: %w", node, err)
	}
	out := map[string]string{}
	for _, p := range pods {
		if _, mirror := p.Annotations[corev1.MirrorPodAnnotationKey]; !mirror || p.Status.Phase != corev1.PodRunning || len(p.Spec.Containers) == 0 {
			continue
		}
		comp := p.Labels["component"]
		for _, c := range ControlPlaneComponents {
			if comp == c && p.Name == c+"-"+node {
				_, tag, _ := strings.Cut(p.Spec.Containers[0].Image, ":")
				out[c] = tag
			}
		}
	}
	return out, nil
}
