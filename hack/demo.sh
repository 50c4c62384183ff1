#!/usr/bin/env bash
# The README's main job: a counter runs under the podckpt agent in a container-like sandbox,
# the sandbox is stopped like a pod (SIGTERM: the agent checkpoints it with CRIU), a brand-new
# sandbox restores it, twice, and the counter carries on where it stopped.
# Needs root (namespaces, mounts); builds the CRIU root filesystem on first use (cached).
set -euo pipefail
cd "$(dirname "$0")/.."
hack/setup.sh
if [[ $(id -u) -ne 0 ]]; then
    echo "demo: needs root (it creates namespaces and mounts like a container runtime)" >&2
    exit 1
fi
exec .venv/bin/python -m podckpt.devtools.demo "$@"
