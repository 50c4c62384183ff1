"""The operator's own life on a real node: its webhook survives evictions (the PDB keeps one
replica answering, and its replacements never need the webhook), a new controller leader takes
over when the leader's pod goes, the kustomize install works as well as the chart, and
uninstalling (the chart's pre-delete hook, or `kubectl delete` of config/) leaves no webhook
that refuses pods. Runs last in the session (tests/e2e/conftest.py): it reinstalls."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from e2ehelpers import P, apply, container, get, wait_for

from podckpt.devtools import operator_install
from podckpt.devtools.cluster.cluster import Cluster
from podckpt.devtools.operator_install import NAMESPACE

pytestmark = [pytest.mark.node, pytest.mark.slow, pytest.mark.lifecycle]


def _pods(cluster: Cluster, component: str) -> list[dict[str, Any]]:
    found = get(cluster, NAMESPACE, "pods", "-l", f"app.kubernetes.io/name=podckpt-{component}")
    return [
        p for p in (found or {"items": []})["items"] if not p["metadata"].get("deletionTimestamp")
    ]


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
    )


def _evict(cluster: Cluster, pod: str) -> bool:
    body = json.dumps(
        {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": NAMESPACE},
        }
    )
    out = cluster.kubectl(
        "create",
        "--raw",
        f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}/eviction",
        "-f",
        "-",
        input=body,
        check=False,
    )
    if out.returncode != 0:
        assert "disruption budget" in out.stderr, out.stderr
    return out.returncode == 0


def _opted_in_pod(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {f"{P}checkpoint-mode": "true"}},
        "spec": {
            "containers": [container(image)],
            "volumes": [{"name": "store", "emptyDir": {}}],
        },
    }


def _injected(cluster: Cluster, namespace: str, name: str) -> bool:
    pod = get(cluster, namespace, "pod", name)
    return "podckpt.io/injected" in (pod["metadata"].get("annotations") or {})


def test_webhook_evictions_keep_one_replica_answering(
    operator: Cluster, namespace: str, app_image: str
) -> None:
    """What `kubectl drain` does to the webhook's pods, one eviction at a time: the PDB lets
    one go, refuses the other until the replacement is Ready, and opted-in pods are admitted
    (injected) throughout. With one node the replacement lands on the same node; docs/
    operator.md says why a drain of a multi-node cluster cannot stall on the webhook."""
    first, second = (p["metadata"]["name"] for p in _pods(operator, "webhook"))
    assert _evict(operator, first)
    refused_at_once = not _evict(operator, second)
    pod = _opted_in_pod("during-eviction", app_image)
    pod["metadata"]["annotations"] = {f"{P}checkpoint-storage-volume": "store"}
    apply(operator, namespace, pod)
    assert _injected(operator, namespace, "during-eviction")
    if refused_at_once:
        wait_for("the second eviction is allowed", lambda: _evict(operator, second), 120)
    wait_for(
        "two Ready webhook replicas again",
        lambda: len([p for p in _pods(operator, "webhook") if _ready(p)]) == 2,
        120,
    )
    assert refused_at_once, "the PDB let both webhook replicas go at once"


def _holder(cluster: Cluster) -> str | None:
    lease = get(cluster, NAMESPACE, "lease", "podckpt-controller")
    return (lease or {}).get("spec", {}).get("holderIdentity")


def test_controller_leader_pod_deleted_standby_takes_over(
    operator: Cluster, namespace: str, app_image: str
) -> None:
    leader = wait_for("a controller leader", lambda: _holder(operator), 60)
    names = {p["metadata"]["name"] for p in _pods(operator, "controller")}
    assert leader in names, (leader, names)

    def leads() -> bool:
        # kopf answers /healthz from probe results of up to 10 s ago (a probe by the
        # kubelet before the lease was acquired may still be the answer)
        probe = json.loads(
            operator.kubectl(
                "get", "--raw", f"/api/v1/namespaces/{NAMESPACE}/pods/{leader}:8081/proxy/healthz"
            ).stdout
        )
        return probe["controller"]["leading"] is True

    wait_for("the leader's /healthz says it leads", leads, 30)
    operator.kubectl("delete", "pod", "-n", NAMESPACE, leader, "--wait=false")
    started = time.monotonic()

    def taken_over() -> str | None:
        holder = _holder(operator)
        return holder if holder and holder != leader else None

    new = wait_for("another replica holds the lease", taken_over, 60)
    took = time.monotonic() - started
    # Usually the standby, at its next retry after the leader released the Lease; the
    # Deployment's replacement for the deleted pod may start and win that race (seen once in
    # CI), which is as good a takeover: what matters is a live replica leading, and acting.
    live = {p["metadata"]["name"] for p in _pods(operator, "controller")}
    assert new in names | live, (new, names, live)
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "after-failover"},
        "spec": {
            "replicas": 1,
            "serviceName": "after-failover",
            "selector": {"matchLabels": {"app": "after-failover"}},
            "template": {
                "metadata": {"labels": {"app": "after-failover", f"{P}checkpoint-mode": "true"}},
                "spec": {"containers": [container(app_image)]},
            },
        },
    }
    apply(operator, namespace, sts)
    wait_for(
        "the new leader creates the PVC",
        lambda: get(operator, namespace, "pvc", "podckpt-statefulset-after-failover-0"),
        60,
    )
    print(
        f"controller failover: lease taken over by {'the standby' if new in names else 'a new'}"
        f" replica {took:.1f} s after the leader pod's deletion"
    )


def test_uninstall_leaves_no_webhook_refusing_pods_and_kustomize_installs(
    operator: Cluster, namespace: str, app_image: str
) -> None:
    # the chart's own uninstall, pre-delete hook included
    operator_install.helm(operator, "uninstall", "podckpt", "--namespace", NAMESPACE, "--wait")
    assert operator.kubectl(
        "get", "mutatingwebhookconfiguration", "podckpt", check=False
    ).returncode
    pod = _opted_in_pod("after-helm-uninstall", app_image)
    apply(operator, namespace, pod)  # admitted (not refused), and not injected
    assert not _injected(operator, namespace, "after-helm-uninstall")

    # the kustomize tree installs a working operator too
    operator_install.uninstall(operator, wait=True)
    operator_install.install(operator, kustomize=True)
    pod = _opted_in_pod("with-kustomize", app_image)
    pod["metadata"]["annotations"] = {f"{P}checkpoint-storage-volume": "store"}
    apply(operator, namespace, pod)
    assert _injected(operator, namespace, "with-kustomize")

    # and its removal leaves no webhook either
    operator_install.uninstall(operator, wait=True)
    assert operator.kubectl(
        "get", "mutatingwebhookconfiguration", "podckpt", check=False
    ).returncode
    apply(operator, namespace, _opted_in_pod("after-kustomize-uninstall", app_image))
    assert not _injected(operator, namespace, "after-kustomize-uninstall")
