#!/usr/bin/env bash
# The README's demo: the lab, then the node cookbooks against it.
set -euo pipefail
echo "demo: not ready yet: it needs the lab (cookbook-lab) and the node cookbooks."
exit 1
