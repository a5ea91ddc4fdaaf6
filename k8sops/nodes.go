package k8sops

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Nodes lists the cluster's nodes, in pages of the page size.
func (o *Ops) Nodes(ctx context.Context) ([]corev1.Node, error) {
	list, err := o.listNodes(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return list, nil
}

// ControlPlaneLabel marks the control-plane nodes kubeadm sets up.
const ControlPlaneLabel = "node-role.kubernetes.io/control-plane"

// ControlPlaneNodes lists the names of the nodes labelled ControlPlaneLabel, in the
// order the API server returns them (by name).
func (o *Ops) ControlPlaneNodes(ctx context.Context) ([]string, error) {
	list, err := o.listNodes(ctx, metav1.ListOptions{LabelSelector: ControlPlaneLabel})
	if err != nil {
		return nil, fmt.Errorf("list control-plane nodes: %w", err)
	}
	names := make([]string, 0, len(list))
	for _, n := range list {
		names = append(names, n.Name)
	}
	return names, nil
}
