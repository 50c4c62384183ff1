#!/usr/bin/env bash
# The README's main job, on a real cluster: starts the local single-node Kubernetes
# (hack/cluster.sh up), installs the podckpt operator in it from config/, runs a StatefulSet
# whose pod template is labelled memverge.ai/checkpoint-mode=true, deletes its pod and shows
# the new pod carrying on where the old one stopped. The cluster stays up afterwards.
#
#   hack/demo.sh            the cluster demo
#   hack/demo.sh down       tear it all down (cluster, operator, demo)
#   hack/demo.sh sandbox    the agent alone in a container-like sandbox, no Kubernetes
#                           (checkpoint/restore of a counter twice; args: --rounds N --seconds S)
# Needs root (namespaces, mounts, a kubelet); first use builds and caches what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
    echo "demo: needs root (it runs a kubelet and container runtime, or a sandbox)" >&2
    exit 1
fi
case "${1:-}" in
    down)
        exec hack/cluster.sh down
        ;;
    sandbox)
        shift
        hack/setup.sh
        exec .venv/bin/python -m podckpt.devtools.demo "$@"
        ;;
    "")
        hack/setup.sh
        hack/cluster.sh up
        exec .venv/bin/python -m podckpt.devtools.cluster_demo
        ;;
    *)
        echo "usage: hack/demo.sh [down | sandbox [--rounds N] [--seconds S]]" >&2
        exit 2
        ;;
esac
