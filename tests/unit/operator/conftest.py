"""Pod manifests as controllers make them, for the pure admission and identity tests."""

from __future__ import annotations

from typing import Any

import pytest

from podckpt.operator.settings import OperatorSettings

OWNERS: dict[str, dict[str, Any]] = {
    "replicaset": {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4f8"},
    "statefulset": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db"},
    "job": {"apiVersion": "batch/v1", "kind": "Job", "name": "train"},
    "daemonset": {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent"},
}


@pytest.fixture
def op() -> OperatorSettings:
    return OperatorSettings()


def make_pod(
    *,
    name: str | None = "app",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
    owner: str | dict[str, Any] | None = None,
    volumes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "ns", "labels": labels or {}}
    if name is not None:
        meta["name"] = name
    else:
        meta["generateName"] = "app-"
    if annotations:
        meta["annotations"] = annotations
    if isinstance(owner, str):
        owner = OWNERS[owner]
    if owner:
        uid = "1234abcd-0000-4000-8000-000000000000"
        meta["ownerReferences"] = [{"controller": True, "uid": uid, **owner}]
    spec: dict[str, Any] = {
        "containers": containers
        or [
            {
                "name": "app",
                "image": "registry.example/app:1",
                "command": ["/app"],
                "resources": {"limits": {"memory": "1Gi"}},
            }
        ]
    }
    if volumes:
        spec["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


@pytest.fixture(name="make_pod")
def make_pod_fixture() -> Any:
    return make_pod
