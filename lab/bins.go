// Package lab is the project's stand-in for a whole cluster, for tests, demos and
// operators' rehearsals: a real Kubernetes control plane (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler) started by kwokctl from binaries built by
// `make lab-bins`, whose nodes are simulated by kwok.
package lab

import (
	"bufio"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

//go:embed bins/versions
var versionsFile string

// Versions are the pinned versions of the lab binaries (lab/bins/versions).
type Versions struct {
	Kubernetes, Etcd, Kwok string
}

// PinnedVersions returns the versions the lab binaries are built at.
func PinnedVersions() Versions {
	var v Versions
	sc := bufio.NewScanner(strings.NewReader(versionsFile))
	for sc.Scan() {
		k, val, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		switch k {
		case "K8S":
			v.Kubernetes = val
		case "ETCD":
			v.Etcd = val
		case "KWOK":
			v.Kwok = val
		}
	}
	return v
}

// binaries are the programs `make lab-bins` builds.
var binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubeadm", "kwok", "kwokctl"}

// BinDir returns the cache directory holding the lab binaries for the pinned versions
// ($COOKBOOK_LAB_BIN if set, else $XDG_CACHE_HOME/cookbook/lab/<key>/bin, else
// ~/.cache/cookbook/lab/<key>/bin) and whether all of them are there.
func BinDir() (dir string, ok bool) {
	dir = os.Getenv("COOKBOOK_LAB_BIN")
	if dir == "" {
		cache := os.Getenv("XDG_CACHE_HOME")
		if cache == "" {
			home, _ := os.UserHomeDir()
			cache = filepath.Join(home, ".cache")
		}
		v := PinnedVersions()
		key := fmt.Sprintf("k8s-%s_etcd-%s_kwok-%s", v.Kubernetes, v.Etcd, v.Kwok)
		dir = filepath.Join(cache, "cookbook", "lab", key, "bin")
	}
	for _, b := range binaries {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.Mode()&0o111 == 0 {
			return dir, false
		}
	}
	return dir, true
}
