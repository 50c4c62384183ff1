"""Volumes follow their workload (issue 10), against the real API server and controller-
manager: a pod whose checkpoint PVC is not there yet waits behind podckpt's scheduling gate
until the controller has created it (the scheduler never looks for a missing PVC); a
replacement pod, whose PVC is there, is not held; a StatefulSet deleted and recreated under
the same name waits for the old PVC to go and gets a new one of its own."""

from __future__ import annotations

from typing import Any

import pytest
from kubehelpers import Kube, eventually
from test_admission import ON, template

pytestmark = pytest.mark.apiserver

GATE = "podckpt.io/checkpoint-volume"
CLAIM = "podckpt-statefulset-db-0"


def _statefulset() -> dict[str, Any]:
    return {
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 1,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": template({**ON, "app": "db"}),
        },
    }


def _gates(pod: dict[str, Any]) -> list[str]:
    return [g["name"] for g in pod["spec"].get("schedulingGates") or ()]


def _pod(kube: Kube, namespace: str, exclude: set[str]) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        for found in kube.pods(namespace, "app=db"):
            meta = found["metadata"]
            if meta["uid"] not in exclude and not meta.get("deletionTimestamp"):
                return found
        return None

    return eventually(check, what="a new pod of db")


def test_a_pod_waits_for_its_volume_and_a_replacement_does_not(kube: Kube, namespace: str) -> None:
    manifest = _statefulset()
    manifest["spec"]["replicas"] = 0
    kube.apps.create_namespaced_stateful_set(namespace, manifest)
    owner = kube.apps.read_namespaced_stateful_set("db", namespace).metadata.uid
    # what the StatefulSet controller would create now (a server-side dry run: the webhook
    # answers, nothing is stored): its PVC does not exist yet, so it waits behind the gate
    would_be = {
        "metadata": {
            "name": "db-0",
            "labels": {**ON, "app": "db", "apps.kubernetes.io/pod-index": "0"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "name": "db",
                    "uid": owner,
                    "controller": True,
                }
            ],
        },
        "spec": template({})["spec"],
    }
    assert _gates(kube.create_pod(namespace, would_be, dry_run="All")) == [GATE]

    kube.apps.patch_namespaced_stateful_set("db", namespace, {"spec": {"replicas": 1}})
    first = _pod(kube, namespace, set())
    # the controller creates the PVC and removes the gate
    eventually(
        lambda: not _gates(kube.plain(kube.core.read_namespaced_pod("db-0", namespace))),
        what="the gate removed",
    )
    claim = kube.pvc(namespace, CLAIM)
    assert claim is not None
    assert [r["uid"] for r in claim["metadata"]["ownerReferences"]] == [owner]

    kube.core.delete_namespaced_pod("db-0", namespace, grace_period_seconds=0)
    second = _pod(kube, namespace, {first["metadata"]["uid"]})
    assert _gates(second) == [], "a replacement whose volume is there waits for nothing"


def test_a_recreated_workload_gets_a_volume_of_its_own(kube: Kube, namespace: str) -> None:
    kube.apps.create_namespaced_stateful_set(namespace, _statefulset())
    eventually(lambda: kube.pvc(namespace, CLAIM), what="the first PVC")
    first = _pod(kube, namespace, set())
    old = kube.pvc(namespace, CLAIM)
    assert old is not None
    kube.apps.delete_namespaced_stateful_set("db", namespace, propagation_policy="Background")
    eventually(
        lambda: (
            not [
                p
                for p in kube.pods(namespace, "app=db")
                if p["metadata"]["uid"] == first["metadata"]["uid"]
            ]
            or None
        ),
        what="the old pod gone",
    )
    kube.apps.create_namespaced_stateful_set(namespace, _statefulset())
    owner = kube.apps.read_namespaced_stateful_set("db", namespace).metadata.uid
    pod = _pod(kube, namespace, {first["metadata"]["uid"]})

    def settled() -> dict[str, Any] | None:
        claim = kube.pvc(namespace, CLAIM)
        current = kube.plain(kube.core.read_namespaced_pod("db-0", namespace))
        if claim is None or _gates(current):
            return None
        return claim

    claim = eventually(settled, timeout=90, what="a new PVC and the gate removed")
    assert claim["metadata"]["uid"] != old["metadata"]["uid"], "the old PVC was reused"
    assert [r["uid"] for r in claim["metadata"]["ownerReferences"]] == [owner]
    assert not claim["metadata"].get("deletionTimestamp")
    assert pod["metadata"]["uid"] != first["metadata"]["uid"]
