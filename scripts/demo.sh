#!/usr/bin/env bash
# The README's demo: bring up the lab (a toolsbeta cluster on this machine), then run the
# node cookbooks against it as an operator would, with their real output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash lab/bins/build.sh

dir="${DEMO_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/cookbook-demo-XXXXXX")}"
bin="$PWD/bin"
trap '"$bin/cookbook-lab" --dir "$dir" down >/dev/null 2>&1 || true; [ -z "${DEMO_DIR:-}" ] && rm -rf "$dir"' EXIT

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "cookbook-lab up: 3 control nodes, 4 workers, 2 NFS workers, the sample workload"
eval "$("$bin/cookbook-lab" --dir "$dir" up --detach | tail -n 1)"
export XDG_STATE_HOME="$dir/state"
cb() { echo "\$ cookbook $*"; "$bin/cookbook" "$@"; }

say "What the cluster looks like"
cb list-nodes --cluster-name toolsbeta

say "Rehearse first: a dry-run reads everything for real and writes nothing"
cb --dry-run add-k8s-node --cluster-name toolsbeta --role worker

say "Add a worker"
cb add-k8s-node --cluster-name toolsbeta --role worker

say "Reboot every worker, two at a time (cordon, drain, reboot proven by boot id, Ready, uncordon, health gate)"
cb roll-reboot --cluster-name toolsbeta --all-workers --max-unavailable 2 --force --delete-emptydir-data

say "Remove the oldest worker"
cb --yes remove-k8s-node --cluster-name toolsbeta --role worker --force --delete-emptydir-data

say "The result"
cb list-nodes --cluster-name toolsbeta
cb runs
say "Audit lines sent"
cat "$dir/audit.log"
