#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, for humans (the tests use the same code
# through pytest fixtures). See docs/cluster.md.
#   hack/cluster.sh up [--tier apiserver]   start (idempotent); prints how to point kubectl
#   hack/cluster.sh down [--keep-logs]      stop exactly what `up` started, remove state
#   hack/cluster.sh status                  JSON status; exit 0 if up, 3 if not
#   hack/cluster.sh env                     eval "$(hack/cluster.sh env)"
#   hack/cluster.sh build                   build/cache the Kubernetes binaries only
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
