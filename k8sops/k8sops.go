// Package k8sops is the Kubernetes half of the cookbooks: cordon, drain that respects
// disruption budgets, waits on node state, labels and taints, node deletion and the
// health gate of rolling jobs. Every write goes through a dryrun.Gate.
package k8sops

import (
	"fmt"
	"log/slog"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"example.com/cookbook/dryrun"
)

// Ops performs Kubernetes operations on one cluster.
type Ops struct {
	// Client talks to the cluster.
	Client kubernetes.Interface
	// Gate is where writes pass; nil performs them.
	Gate *dryrun.Gate
	// Log receives progress lines; nil discards them.
	Log *slog.Logger
	// ReportEvery is how often a long wait says what it waits on; 5s if zero.
	ReportEvery time.Duration
	// PageSize is how many objects one list request asks for; DefaultPageSize if zero.
	PageSize int64
}

func (o *Ops) log() *slog.Logger {
	if o.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Log
}

func (o *Ops) reportEvery() time.Duration {
	if o.ReportEvery > 0 {
		return o.ReportEvery
	}
	return 5 * time.Second
}

// UserAgent identifies cookbook's requests in the API server's logs.
const UserAgent = "cookbook"

// Config loads a client configuration with client-go's loading rules: the given
// kubeconfig path if any, else $KUBECONFIG, else ~/.kube/config; context "" is the
// file's current context.
func Config(kubeconfig, kubeContext string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kubeContext}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = UserAgent
	if cfg.QPS == 0 {
		cfg.QPS, cfg.Burst = 50, 100
	}
	return cfg, nil
}

// NewClient returns a clientset for the kubeconfig and context (see Config).
func NewClient(kubeconfig, kubeContext string) (kubernetes.Interface, error) {
	cfg, err := Config(kubeconfig, kubeContext)
	if err != nil {
		return nil, err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return c, nil
}
