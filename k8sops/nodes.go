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
