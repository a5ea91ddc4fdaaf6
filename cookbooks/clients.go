package cookbooks

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"

	"example.com/cookbook/config"
	"example.com/cookbook/etcdctl"
	"example.com/cookbook/hooks"
	"example.com/cookbook/k8sops"
	"example.com/cookbook/openstack"
	"example.com/cookbook/silences"
	"example.com/cookbook/ssh"
)

// Cloud returns the OpenStack client of the cluster, with the run's gate and log.
func (e *Env) Cloud(ctx context.Context, cl *config.Cluster) (*openstack.Client, error) {
	c, err := openstack.New(ctx, openstack.Options{
		Cloud: cl.OpenStack.Cloud, CloudsFile: cl.OpenStack.CloudsFile, Project: cl.OpenStack.Project,
		Gate: e.Gate, Log: e.Log,
	})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", cl.Name, err)
	}
	return c, nil
}

// CheckAccess checks, reading local files only, what the cluster's configuration names
// for its cloud and its Kubernetes API: the clouds.yaml file and its entry, the
// kubeconfig file and its context. Cookbooks call it in Prepare, so that a missing or
// wrong file is bad input (exit 2) before any run, lock or log exists.
func (e *Env) CheckAccess(cl *config.Cluster) error {
	if err := openstack.CheckCloud(openstack.Options{Cloud: cl.OpenStack.Cloud, CloudsFile: cl.OpenStack.CloudsFile, Project: cl.OpenStack.Project}); err != nil {
		return BadInputf("cluster %s: %w", cl.Name, err)
	}
	return e.CheckKube(cl)
}

// CheckKube is CheckAccess for cookbooks that use only the Kubernetes API.
func (e *Env) CheckKube(cl *config.Cluster) error {
	if err := k8sops.CheckConfig(cl.Kubernetes.Kubeconfig, cl.Kubernetes.Context); err != nil {
		return BadInputf("cluster %s: %w", cl.Name, err)
	}
	return nil
}

// SSH returns the SSH client of the cluster, with the run's gate and log.
func (e *Env) SSH(cl *config.Cluster) (*ssh.Client, error) {
	s := cl.SSH
	c, err := ssh.New(ssh.Options{User: s.User, Port: s.Port, Sudo: s.Sudo, JumpHost: s.JumpHost, KnownHosts: s.KnownHosts,
		IdentityFiles: s.IdentityFiles, InsecureIgnoreHostKey: s.InsecureIgnoreHostKey, Gate: e.Gate, Log: e.Log})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", cl.Name, err)
	}
	if e.StateDir != "" {
		c.Learned = filepath.Join(e.StateDir, "known_hosts")
	}
	return c, nil
}

// kubeTaints are the configuration's taints as k8sops takes them.
func kubeTaints(ts []config.Taint) []k8sops.Taint {
	out := make([]k8sops.Taint, len(ts))
	for i, t := range ts {
		out[i] = k8sops.Taint{Key: t.Key, Value: t.Value, Effect: t.Effect}
	}
	return out
}

// clients are the three backends of the node cookbooks, for one cluster, and the site's
// parts: the run's silencer (nil without an alertmanager) and its hook runner.
type clients struct {
	env      *Env
	cl       *config.Cluster
	cloud    *openstack.Client
	ssh      *ssh.Client
	kube     *k8sops.Ops
	silencer *silences.Silencer
	hooks    *hooks.Runner
	// readEtcd, if set, takes the place of etcdStatus's etcdctl over SSH (unit tests).
	readEtcd func(ctx context.Context, except ...string) (etcdctl.Status, string, error)

	mu            sync.Mutex
	controlWarned map[string]bool // the configured control nodes warned about (warnControl)
}

func newClients(ctx context.Context, env *Env, cl *config.Cluster) (*clients, error) {
	cloud, err := env.Cloud(ctx, cl)
	if err != nil {
		return nil, err
	}
	sshc, err := env.SSH(cl)
	if err != nil {
		return nil, err
	}
	k, err := env.Kube(cl)
	if err != nil {
		return nil, err
	}
	sil, err := env.Silencer(cl)
	if err != nil {
		return nil, err
	}
	return &clients{env: env, cl: cl, cloud: cloud, ssh: sshc, kube: k, silencer: sil,
		hooks: &hooks.Runner{Gate: env.Gate, SSH: sshc, Log: env.Log}}, nil
}

// Silencer returns the run's silencer of the cluster's Alertmanager, with the run's gate
// and log; nil when the cluster has no alertmanager.
func (e *Env) Silencer(cl *config.Cluster) (*silences.Silencer, error) {
	opts := silences.FromConfig(cl.Alertmanager, e.Gate)
	if opts == nil {
		return nil, nil
	}
	c, err := silences.New(*opts)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", cl.Name, err)
	}
	return silences.NewSilencer(c, e.Log), nil
}

// target is what SSH connects to for a node: its FQDN, or the address OpenStack reports
// when the cluster says ssh.connectTo: address.
func (c *clients) target(ctx context.Context, node string) (string, error) {
	if c.cl.SSH.ConnectTo != "address" {
		return c.cl.FQDN(node), nil
	}
	srv, err := c.cloud.ServerByName(ctx, node)
	if err != nil {
		return "", err
	}
	if srv.Address == "" {
		return "", fmt.Errorf("server %s has no address yet", node)
	}
	return srv.Address, nil
}
