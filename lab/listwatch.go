package lab

import (
	"context"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
)

// listWatch lists and watches the nodes matching a field selector.
type listWatch struct {
	cp  *ControlPlane
	sel string
}

func (l *listWatch) List(opts metav1.ListOptions) (runtime.Object, error) {
	opts.FieldSelector = l.sel
	return l.cp.Client.CoreV1().Nodes().List(context.Background(), opts)
}

func (l *listWatch) Watch(opts metav1.ListOptions) (watch.Interface, error) {
	opts.FieldSelector = l.sel
	return l.cp.Client.CoreV1().Nodes().Watch(context.Background(), opts)
}
