package lab

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// The simulated control plane's version is what kubeadm records, not the version of the
// lab's API server binary: the ClusterConfiguration's kubernetesVersion in the
// kubeadm-config ConfigMap of kube-system, and the image tags of each control node's
// static pods (their mirror pods kube-apiserver-<node>, kube-controller-manager-<node>,
// kube-scheduler-<node> in kube-system).

// StaticPodComponents are the control-plane components kubeadm runs as static pods (etcd
// aside: its version is etcd's).
var StaticPodComponents = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"}

const kubeadmConfig = "kubeadm-config"

var kubernetesVersionRE = regexp.MustCompile(`(?m)^kubernetesVersion:\s*(\S+)\s*$`)

func clusterConfiguration(ver string) string {
	return fmt.Sprintf(`apiServer: {}
apiVersion: kubeadm.k8s.io/v1beta4
certificatesDir: /etc/kubernetes/pki
clusterName: kubernetes
controlPlaneEndpoint: k8s.svc.lab:6443
controllerManager: {}
dns: {}
etcd:
  local:
    dataDir: /var/lib/etcd
imageRepository: registry.k8s.io
kind: ClusterConfiguration
kubernetesVersion: %s
networking:
  dnsDomain: cluster.local
  podSubnet: 192.168.0.0/16
  serviceSubnet: 10.96.0.0/12
scheduler: {}
`, ver)
}

// ClusterVersion is the kubernetesVersion of the ClusterConfiguration in the
// kubeadm-config ConfigMap ("v1.37.2"); "" when there is no such ConfigMap (a lab
// control plane started without stack, which kubeadm never recorded).
func (cp *ControlPlane) ClusterVersion(ctx context.Context) (string, error) {
	cm, err := cp.Client.CoreV1().ConfigMaps("kube-system").Get(ctx, kubeadmConfig, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the kubeadm-config ConfigMap: %w", err)
	}
	m := kubernetesVersionRE.FindStringSubmatch(cm.Data["ClusterConfiguration"])
	if m == nil {
		return "", fmt.Errorf("the kubeadm-config ConfigMap has no ClusterConfiguration kubernetesVersion")
	}
	return m[1], nil
}

// SetClusterVersion records ver ("v1.37.2") as the ClusterConfiguration's
// kubernetesVersion, creating the kubeadm-config ConfigMap if missing, as kubeadm init
// and kubeadm upgrade apply do.
func (cp *ControlPlane) SetClusterVersion(ctx context.Context, ver string) error {
	cms := cp.Client.CoreV1().ConfigMaps("kube-system")
	cm, err := cms.Get(ctx, kubeadmConfig, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: kubeadmConfig, Namespace: "kube-system"},
			Data: map[string]string{"ClusterConfiguration": clusterConfiguration(ver)}}
		if _, err := cms.Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create the kubeadm-config ConfigMap: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the kubeadm-config ConfigMap: %w", err)
	}
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cc := cm.Data["ClusterConfiguration"]
	if kubernetesVersionRE.MatchString(cc) {
		cc = kubernetesVersionRE.ReplaceAllString(cc, "kubernetesVersion: "+ver)
	} else {
		cc = clusterConfiguration(ver)
	}
	cm.Data["ClusterConfiguration"] = cc
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update the kubeadm-config ConfigMap: %w", err)
	}
	return nil
}

// SetStaticPods makes the node's control-plane static pods run version ver: their
// mirror pods in kube-system carry the image tag ver, as a kubelet reports the manifests
// kubeadm wrote in /etc/kubernetes/manifests.
func (cp *ControlPlane) SetStaticPods(ctx context.Context, node, ver string) error {
	n, err := cp.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("static pods of %s: %w", node, err)
	}
	pods := cp.Client.CoreV1().Pods("kube-system")
	for _, comp := range StaticPodComponents {
		image := "registry.k8s.io/" + comp + ":" + ver
		name := comp + "-" + node
		p, err := pods.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			ctrl := true
			p = &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-system",
					Labels:          map[string]string{"component": comp, "tier": "control-plane"},
					Annotations:     map[string]string{"kubernetes.io/config.mirror": "lab", "kubernetes.io/config.source": "file"},
					OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: n.Name, UID: n.UID, Controller: &ctrl}},
				},
				Spec: corev1.PodSpec{NodeName: node, Priority: nil, PriorityClassName: "system-node-critical", HostNetwork: true,
					Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute}},
					Containers:  []corev1.Container{{Name: comp, Image: image}}},
			}
			if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("static pod %s: %w", name, err)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("static pod %s: %w", name, err)
		}
		err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if p.Spec.Containers[0].Image == image {
				return nil
			}
			p.Spec.Containers[0].Image = image
			_, err := pods.Update(ctx, p, metav1.UpdateOptions{})
			if apierrors.IsConflict(err) {
				if p, err = pods.Get(ctx, name, metav1.GetOptions{}); err == nil {
					return apierrors.NewConflict(corev1.Resource("pods"), name, fmt.Errorf("changed"))
				}
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("static pod %s: %w", name, err)
		}
	}
	return nil
}

// StaticPodVersions are the versions (image tags) of the node's control-plane static
// pods by component; a missing pod is absent.
func (cp *ControlPlane) StaticPodVersions(ctx context.Context, node string) (map[string]string, error) {
	out := map[string]string{}
	for _, comp := range StaticPodComponents {
		p, err := cp.Client.CoreV1().Pods("kube-system").Get(ctx, comp+"-"+node, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		_, tag, _ := strings.Cut(p.Spec.Containers[0].Image, ":")
		out[comp] = tag
	}
	return out, nil
}
