"""Deployment slots against the real API server and the real ReplicaSet controller, for each
way a replica dies: deleted (its replacement waits for the dump under the same name), failed by
the kubelet (eviction, node shutdown: the Failed pod keeps its name) and lost with its node
(terminating forever). No kubelet runs here: a pod is "on a node" by a binding, "failed" by the
status the kubelet would write, and "lost" because nothing ever confirms its deletion."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubehelpers import Kube, eventually
from test_admission import ON, template

pytestmark = pytest.mark.apiserver

SLOT = "podckpt.io/slot"
CLAIM = "podckpt.io/claim"


def _deployment(kube: Kube, namespace: str, replicas: int) -> list[dict[str, Any]]:
    pod_template = template({**ON, "app": "web"})
    # No scheduler places these pods (the node tier may run one in this session): the tests
    # bind them themselves.
    pod_template["spec"]["schedulerName"] = "podckpt-test-nobody"
    kube.apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": pod_template,
            },
        },
    )
    pods = eventually(
        lambda: len(p := kube.pods(namespace, "app=web")) == replicas and p, what="pods"
    )
    # wait out the webhook's reservations of the first creations (2 s in these tests)
    time.sleep(2.5)
    return pods


def _bind(kube: Kube, namespace: str, name: str, node: str) -> None:
    """What the scheduler does: the pod is now on `node` (no kubelet runs it here)."""
    kube.core.create_namespaced_pod_binding(
        name,
        namespace,
        {"metadata": {"name": name}, "target": {"apiVersion": "v1", "kind": "Node", "name": node}},
        _preload_content=False,
    )


def _live(kube: Kube, namespace: str) -> dict[str, dict[str, Any]]:
    return {
        p["metadata"]["name"]: p
        for p in kube.pods(namespace, "app=web")
        if p["status"].get("phase") not in ("Failed", "Succeeded")
        and not p["metadata"].get("deletionTimestamp")
    }


def test_replacement_of_a_kubelet_evicted_pod_restores_its_slot(kube: Kube, namespace: str) -> None:
    """A node-pressure eviction or a graceful node shutdown leaves the pod Failed under its name:
    the replacement still takes its slot (and its checkpoint), under the slot's next name."""
    _deployment(kube, namespace, 2)
    _bind(kube, namespace, "web-slot-0", "node-a")
    kube.core.patch_namespaced_pod_status(
        "web-slot-0",
        namespace,
        {
            "status": {
                "phase": "Failed",
                "reason": "Evicted",
                "message": "The node was low on resource: ephemeral-storage.",
            }
        },
    )
    replacement = eventually(
        lambda: _live(kube, namespace).get("web-slot-0-1"), what="the replacement in slot 0"
    )
    assert replacement["metadata"]["labels"][SLOT] == "0"
    assert replacement["metadata"]["annotations"][CLAIM] == "podckpt-deployment-web-0"
    assert set(_live(kube, namespace)) == {"web-slot-0-1", "web-slot-1"}
    failed = kube.core.read_namespaced_pod("web-slot-0", namespace)
    assert failed.status.phase == "Failed", "the evicted pod stays for kubectl describe"


def test_replacement_of_a_pod_lost_with_its_node_starts_in_bounded_time(
    kube: Kube, namespace: str
) -> None:
    """A pod deleted on a node that never answers stays Terminating forever; its replacement
    waits for it (its dump) only until its deadline plus a margin (3 s here, 30 s by default),
    then takes the slot under the next name instead of failing with AlreadyExists forever."""
    _deployment(kube, namespace, 1)
    _bind(kube, namespace, "web-slot-0", "lost-node")
    kube.core.delete_namespaced_pod("web-slot-0", namespace, grace_period_seconds=2)
    started = time.monotonic()
    # while the old pod is within its deadline, its replacement waits under the same name
    time.sleep(1)
    assert set(_live(kube, namespace)) == set()
    replacement = eventually(
        lambda: _live(kube, namespace).get("web-slot-0-1"),
        timeout=90,
        what="the replacement of the lost pod",
    )
    assert replacement["metadata"]["annotations"][CLAIM] == "podckpt-deployment-web-0"
    assert time.monotonic() - started < 90
    stuck = kube.core.read_namespaced_pod("web-slot-0", namespace)
    assert stuck.metadata.deletion_timestamp is not None


def test_replacement_of_a_deleted_pod_waits_for_it_then_takes_its_name(
    kube: Kube, namespace: str
) -> None:
    """Deletion, drain, the Eviction API and preemption all delete gracefully: the agent dumps
    during the grace period, and the replacement's create fails until the old pod is gone."""
    pods = _deployment(kube, namespace, 1)
    old_uid = pods[0]["metadata"]["uid"]
    _bind(kube, namespace, "web-slot-0", "node-a")
    kube.core.delete_namespaced_pod("web-slot-0", namespace, grace_period_seconds=300)
    time.sleep(3)
    assert set(_live(kube, namespace)) == set(), "no second pod while the first one dumps"
    # the kubelet confirms the deletion once the agent has exited
    kube.core.delete_namespaced_pod("web-slot-0", namespace, grace_period_seconds=0)
    replacement = eventually(
        lambda: (
            (p := _live(kube, namespace).get("web-slot-0"))
            and p["metadata"]["uid"] != old_uid
            and p
        ),
        timeout=60,
        what="the replacement under the same name",
    )
    assert replacement["metadata"]["labels"][SLOT] == "0"
