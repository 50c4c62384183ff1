#!/usr/bin/env bash
# A real Kubernetes on this machine (one node, or several with --nodes), for humans (the tests
# use the same code through pytest fixtures). See docs/cluster.md; `hack/cluster.sh -h` for all.
#   hack/cluster.sh up [--tier apiserver] [--nodes N]   start (idempotent); prints how to point kubectl
#   hack/cluster.sh down [--keep-logs]      stop exactly what `up` started, remove state
#   hack/cluster.sh status                  JSON status, nodes included; exit 0 if up, 3 if not
#   hack/cluster.sh env                     eval "$(hack/cluster.sh env)"
#   hack/cluster.sh build                   build/cache the Kubernetes binaries only
#   hack/cluster.sh node stop|kill|start NAME   a node shut down, lost, or back
#   hack/cluster.sh load-image SOURCE REF   an OCI layout or archive into every node's containerd
# Environment: PODCKPT_CLUSTER_DIR (default /var/lib/podckpt/cluster), PODCKPT_APISERVER_PORT
# (6443), PODCKPT_K8S_VERSION, PODCKPT_CACHE (/var/cache/podckpt).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/python ]]; then
    echo "cluster: .venv is missing; run hack/setup.sh (or make setup) first" >&2
    exit 1
fi
export PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin
exec .venv/bin/python -m podckpt.devtools.cluster "$@"
