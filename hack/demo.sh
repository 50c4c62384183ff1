#!/usr/bin/env bash
# The README's main job, on a real cluster: starts the local two-node Kubernetes
# (hack/cluster.sh up --nodes 2), installs the podckpt operator in it from config/, runs a
# StatefulSet whose pod template is labelled memverge.ai/checkpoint-mode=true, drains the node
# its pod runs on (kubectl drain) and shows the new pod carrying on on the other node where the
# old one stopped: from which node to which, the downtime, the Events of the old and the new
# pod in order. The node is uncordoned afterwards; the cluster stays up.
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
        hack/cluster.sh up --nodes 2
        exec .venv/bin/python -m podckpt.devtools.cluster_demo
        ;;
    *)
        echo "usage: hack/demo.sh [down | sandbox [--rounds N] [--seconds S]]" >&2
        exit 2
        ;;
esac
