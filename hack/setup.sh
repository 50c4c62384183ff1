#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian 12 machine, idempotently:
# Debian packages for the host side, and a virtualenv (.venv) with the locked Python
# dependencies (requirements.lock, with hashes). Expensive artefacts (root filesystems,
# Kubernetes binaries, helm) are built on demand by the code that needs them and cached under
# $PODCKPT_CACHE, keyed by version.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(debootstrap util-linux iproute2 busybox-static musl-tools patchelf gcc make
              rsync jq ca-certificates curl
              etcd-server containerd runc containernetworking-plugins iptables umoci skopeo
              docker-registry)

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
if ((${#need_apt[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing Debian packages ${need_apt[*]}; run as root or: apt-get install ${need_apt[*]}" >&2
        exit 1
    fi
    echo "setup: installing Debian packages: ${need_apt[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm "${need_apt[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: $PYTHON is older than 3.11; set PYTHON=/path/to/python3.11+" >&2
    exit 1
fi
# Exact versions and hashes from requirements.lock (reproducible: `make lock` rewrites it from
# pyproject.toml), then podckpt itself, editable, without resolving anything again.
stamp=.venv/.podckpt-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp || requirements.lock -nt $stamp ]]; then
    [[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes \
        -r requirements.lock
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
    touch "$stamp"
fi
