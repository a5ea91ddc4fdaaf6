package k8sops

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/pager"
)

// DefaultPageSize is how many objects one list request asks for (client-go's list
// chunking), unless Ops.PageSize says otherwise.
const DefaultPageSize = 500

func (o *Ops) pageSize() int64 {
	if o.PageSize > 0 {
		return o.PageSize
	}
	return DefaultPageSize
}

// listPaged lists in chunks of the page size with client-go's pager (which falls back to
// one full list if the continue token expires) and returns the items.
func listPaged[T any](ctx context.Context, size int64, opts metav1.ListOptions, list func(context.Context, metav1.ListOptions) (runtime.Object, error)) ([]T, error) {
	p := pager.New(pager.ListPageFunc(list))
	p.PageSize = size
	var out []T
	err := p.EachListItem(ctx, opts, func(obj runtime.Object) error {
		out = append(out, *any(obj).(*T))
		return nil
	})
	return out, err
}

func (o *Ops) listNodes(ctx context.Context, opts metav1.ListOptions) ([]corev1.Node, error) {
	return listPaged[corev1.Node](ctx, o.pageSize(), opts, func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
		return o.Client.CoreV1().Nodes().List(ctx, opts)
	})
}

func (o *Ops) listPods(ctx context.Context, ns string, opts metav1.ListOptions) ([]corev1.Pod, error) {
	return listPaged[corev1.Pod](ctx, o.pageSize(), opts, func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
		return o.Client.CoreV1().Pods(ns).List(ctx, opts)
	})
}

func (o *Ops) listPDBs(ctx context.Context, ns string, opts metav1.ListOptions) ([]policyv1.PodDisruptionBudget, error) {
	return listPaged[policyv1.PodDisruptionBudget](ctx, o.pageSize(), opts, func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
		return o.Client.PolicyV1().PodDisruptionBudgets(ns).List(ctx, opts)
	})
}
