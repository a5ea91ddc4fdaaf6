#!/usr/bin/env bash
# Builds the lab's control-plane binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kubeadm, kwok, kwokctl) from the Go module proxy into a cache
# directory keyed by their versions, and does nothing when they are already there. When the
# cache has some of them (a binary added to the set later), only the missing ones are built.
#
# Each set lives in its own nested module (k8s/, etcd/, kwok/) so the main module never
# depends on k8s.io/kubernetes, and etcd's dependencies do not clash with Kubernetes'.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/cookbook/lab"

# The versions: lab/bins/versions is the cache key (the lab Go package reads it too);
# the nested go.mod files must require exactly those versions.
. "$here/versions"
k8s_version=$K8S etcd_version=$ETCD kwok_version=$KWOK
check() {
  local got
  got=$(awk -v m="$2" '{ if ($1=="require") { n=$2; v=$3 } else { n=$1; v=$2 } } n==m { print v; exit }' "$here/$1/go.mod")
  if [ "$got" != "$3" ]; then
    echo "lab-bins: lab/bins/$1/go.mod requires $2 $got but lab/bins/versions says $3" >&2
    exit 2
  fi
}
check k8s k8s.io/kubernetes "$k8s_version"
check etcd go.etcd.io/etcd/server/v3 "$etcd_version"
check kwok sigs.k8s.io/kwok "$kwok_version"
key="k8s-${k8s_version}_etcd-${etcd_version}_kwok-${kwok_version}"
bin="$cache_root/$key/bin"

if [ "${1:-}" = "--print-dir" ]; then
  echo "$bin"
  exit 0
fi

want=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubeadm kwok kwokctl)
missing=()
find_missing() {
  local b
  missing=()
  for b in "${want[@]}"; do [ -x "$bin/$b" ] || missing+=("$b"); done
}
find_missing
if [ ${#missing[@]} -eq 0 ]; then
  echo "lab-bins: up to date in $bin"
  exit 0
fi

# One build at a time per version set: a second `make lab-bins` waits for the first and
# then finds the binaries there.
mkdir -p "$cache_root/$key"
exec 9>"$cache_root/$key/build.lock"
if ! flock -n 9; then
  echo "lab-bins: another build of $key is running; waiting for it"
  flock 9
fi
find_missing
if [ ${#missing[@]} -eq 0 ]; then
  echo "lab-bins: up to date in $bin"
  exit 0
fi
# Builds into a temp dir next to the cache; what a killed build left is removed.
rm -rf "$cache_root/$key"/.build-*
tmp=$(mktemp -d "$cache_root/$key/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
export GOFLAGS="${GOFLAGS:-} -mod=readonly"
export CGO_ENABLED=0

minor=${k8s_version#v1.}; minor=${minor%%.*}
k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${k8s_version} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor} -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=${k8s_version}"

start=$(date +%s)
step() { echo "lab-bins: [$(( $(date +%s) - start ))s] $*"; }
echo "lab-bins: building ${missing[*]} into $bin"
is_missing() { [[ " ${missing[*]} " == *" $1 "* ]]; }

# The Kubernetes binaries are packages of k8s.io/kubernetes/cmd (kubectl too).
k8s_pkgs=()
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl kubeadm; do
  is_missing "$b" && k8s_pkgs+=("k8s.io/kubernetes/cmd/$b")
done
if [ ${#k8s_pkgs[@]} -gt 0 ]; then
  step "building ${k8s_pkgs[*]##*/} ${k8s_version} (all five: about 11 of the 13-15 minutes of a cold build on 2 cores)"
  (cd "$here/k8s" && go build -trimpath -ldflags "$k8s_ldflags" -o "$tmp/" "${k8s_pkgs[@]}")
fi
if is_missing etcd; then
  step "building etcd ${etcd_version}"
  (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
fi
kwok_pkgs=()
for b in kwok kwokctl; do is_missing "$b" && kwok_pkgs+=("sigs.k8s.io/kwok/cmd/$b"); done
if [ ${#kwok_pkgs[@]} -gt 0 ]; then
  step "building ${kwok_pkgs[*]##*/} ${kwok_version}"
  (cd "$here/kwok" && go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${kwok_version#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${k8s_version#v}" -o "$tmp/" \
    "${kwok_pkgs[@]}")
fi

step "checking the versions the binaries report"
expect() { # what the output must contain, then the binary and its arguments
  local want=$1 b=$2 out
  shift 2
  is_missing "$b" || return 0
  out=$("$tmp/$b" "$@" 2>&1 | head -3) || true
  if [[ "$out" != *"$want"* ]]; then
    echo "lab-bins: $b $* says \"$out\", want $want" >&2
    exit 1
  fi
}
for b in kube-apiserver kube-controller-manager kube-scheduler; do expect "Kubernetes $k8s_version" "$b" --version; done
expect "Client Version: $k8s_version" kubectl version --client
expect "GitVersion:\"$k8s_version\"" kubeadm version
expect "etcd Version: ${etcd_version#v}" etcd --version
expect "$kwok_version" kwok --version
expect "$kwok_version" kwokctl --version

# Publish binary by binary with a rename on the same file system: the cache is complete
# only when every binary is there, so a build killed half-way is resumed by the next one,
# which builds only what is still missing.
mkdir -p "$bin"
for b in "${missing[@]}"; do mv -f "$tmp/$b" "$bin/$b"; done
step "done: $bin"
