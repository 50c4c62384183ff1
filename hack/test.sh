#!/usr/bin/env bash
# The README's test command (via `make test`): static checks, then every test tier with its
# real parts. Fixtures build and cache what they need (CRIU root filesystem, agent bundle,
# Kubernetes binaries under $PODCKPT_CACHE) and stop every process they start.
# With CI=true a missing real part fails the run instead of skipping tests.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/setup.sh
V=.venv/bin

echo "== ruff"
$V/ruff check src tests bench
$V/ruff format --check src tests bench
echo "== mypy (strict)"
$V/mypy
echo "== import layering"
$V/lint-imports
echo "== pytest"
if [[ $(id -u) -ne 0 ]]; then
    echo "note: not root: tests of CRIU, the sandbox and the cluster will be skipped" >&2
fi
exec $V/pytest --durations=30 tests "$@"
