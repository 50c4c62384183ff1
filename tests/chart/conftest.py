"""Fixtures of the chart tests: `helm` (built once from the Go module proxy, cached) and
`kubectl` (the local cluster's, for `kubectl kustomize`). Missing: skip, or fail under CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from podckpt.devtools.cluster.binaries import ensure_binaries
from podckpt.devtools.cluster.errors import ClusterError
from podckpt.devtools.helm import ensure_helm


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"chart test prerequisite missing under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def helm() -> Path:
    try:
        return ensure_helm()
    except ClusterError as exc:
        _unavailable(str(exc))
        raise


@pytest.fixture(scope="session")
def kubectl() -> Path:
    try:
        return ensure_binaries() / "kubectl"
    except ClusterError as exc:
        _unavailable(str(exc))
        raise
