"""Deployment and StatefulSet on a real node: every replica's pod is deleted at once, and each
replacement restores the process tree of its own slot / ordinal (same tag, counter goes on)."""

from __future__ import annotations

from typing import Any

import pytest
from e2ehelpers import P, apply, container, counted, counts, events, get, logs, pods, tags, wait_for

from podckpt.devtools.cluster.cluster import Cluster

pytestmark = [pytest.mark.node, pytest.mark.slow]


CLASS = "e2e-checkpoints"


def _workload(kind: str, name: str, image: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": 2,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name, f"{P}checkpoint-mode": "true"}},
            "spec": {"terminationGracePeriodSeconds": 30, "containers": [container(image)]},
        },
    }
    if kind == "StatefulSet":
        spec["template"]["metadata"]["annotations"] = {f"{P}checkpoint-storage-class": CLASS}
        spec["serviceName"] = name
        spec["podManagementPolicy"] = "Parallel"
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def _running(cluster: Cluster, ns: str, selector: str, exclude: set[str]) -> dict[str, str]:
    """name -> uid of the 2 running, not terminating pods whose uid is not excluded."""

    def check() -> dict[str, str] | None:
        found = {
            p["metadata"]["name"]: p["metadata"]["uid"]
            for p in pods(cluster, ns, selector)
            if p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
            and p["metadata"]["uid"] not in exclude
        }
        return found if len(found) == 2 else None

    return wait_for(f"2 running pods of {selector}", check, 240)


def test_each_replica_and_ordinal_restores_its_own_state(
    operator: Cluster, namespace: str, app_image: str
) -> None:
    storage_class = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": CLASS},
        "provisioner": "kubernetes.io/host-path",
        "reclaimPolicy": "Delete",
    }
    apply(operator, namespace, storage_class)
    for kind, name in (("Deployment", "web"), ("StatefulSet", "db")):
        apply(operator, namespace, _workload(kind, name, app_image))
    first: dict[str, str] = {}
    for app in ("web", "db"):
        first |= _running(operator, namespace, f"app={app}", set())
    assert set(first) == {"web-slot-0", "web-slot-1", "db-0", "db-1"}
    before = {}
    for pod in first:
        counted(operator, namespace, pod, 10)
        before[pod] = (tags(logs(operator, namespace, pod)), counts(logs(operator, namespace, pod)))
    assert len(set().union(*(t for t, _ in before.values()))) == 4, "tags must differ"

    operator.kubectl("delete", "pod", "-n", namespace, *first, "--wait=false")
    second: dict[str, str] = {}
    for app in ("web", "db"):
        second |= _running(operator, namespace, f"app={app}", set(first.values()))
    assert set(second) == set(first), "each replacement takes its slot / ordinal"
    for pod in second:
        counted(operator, namespace, pod, 1)
        text = logs(operator, namespace, pod)
        old_tags, old_counts = before[pod]
        assert tags(text) == old_tags, f"{pod} restored another tree: {tags(text)} != {old_tags}"
        assert counts(text)[0] > old_counts[-1], f"{pod} restarted from {counts(text)[0]}"

    def restored() -> bool:
        named = {e["involvedObject"]["name"] for e in events(operator, namespace, "Restored")}
        return named >= set(second)

    wait_for("a Restored event on every new pod", restored, 90)

    # checkpoint-storage-class on the StatefulSet; the Deployment's volumes use the default
    classes = {
        c["metadata"]["name"]: c["spec"].get("storageClassName")
        for c in get(operator, namespace, "pvc")["items"]
    }
    assert classes == {
        "podckpt-statefulset-db-0": CLASS,
        "podckpt-statefulset-db-1": CLASS,
        "podckpt-deployment-web-0": "standard",
        "podckpt-deployment-web-1": "standard",
    }

    # deleting the workloads removes their checkpoint volumes (owner references, GC)
    operator.kubectl("delete", "deployment,statefulset", "--all", "-n", namespace, "--wait=false")

    def claims_gone() -> bool:
        found = get(operator, namespace, "pvc") or {"items": []}
        return not [c for c in found["items"] if c["metadata"]["name"].startswith("podckpt-")]

    wait_for("the checkpoint volumes removed with their workloads", claims_gone, 180)
    operator.kubectl("delete", "storageclass", CLASS, "--ignore-not-found")
