"""Helpers of the two-node disruption tests: counter workloads placed on one node, what a pod
had counted before a disruption, and the proof that its replacement carried on from there on
the other node (same process tree: the random tag held only in memory; its count went on)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

from e2ehelpers import P, container, counts, get, logs, pods, tags, wait_for

from podckpt.devtools.cluster.cluster import Cluster

FIRST, SECOND = "podckpt-node", "podckpt-node-2"


def template(app: str, image: str, **keys: str) -> dict[str, Any]:
    """A checkpointed counter's pod template; `keys` are memverge.ai/ annotations."""
    return {
        "metadata": {
            "labels": {"app": app, f"{P}checkpoint-mode": "true"},
            "annotations": {f"{P}{k.replace('_', '-')}": v for k, v in keys.items()},
        },
        "spec": {"terminationGracePeriodSeconds": 30, "containers": [container(image)]},
    }


def deployment(name: str, image: str, replicas: int = 1, **keys: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": template(name, image, **keys),
        },
    }


def statefulset(name: str, image: str, **keys: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": template(name, image, **keys),
        },
    }


def job(name: str, image: str, **keys: str) -> dict[str, Any]:
    spec = template(name, image, **keys)
    spec["spec"]["restartPolicy"] = "Never"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 4, "template": spec},
    }


def apply_all(cluster: Cluster, namespace: str, *docs: dict[str, Any]) -> None:
    body = {"apiVersion": "v1", "kind": "List", "items": list(docs)}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))


@contextlib.contextmanager
def only_on(cluster: Cluster, node: str) -> Iterator[None]:
    """New pods go to `node` while this lasts: every other node is cordoned."""
    others = [n for n in cluster.node_names if n != node]
    for other in others:
        cluster.kubectl("cordon", other)
    try:
        yield
    finally:
        for other in others:
            cluster.kubectl("uncordon", other)


def running(
    cluster: Cluster, namespace: str, app: str, count: int, exclude: set[str]
) -> list[dict[str, Any]]:
    """`count` Running, not terminating pods of `app` whose uid is not in `exclude`."""

    def check() -> list[dict[str, Any]] | None:
        found = [
            p
            for p in pods(cluster, namespace, f"app={app}")
            if p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
            and p["metadata"]["uid"] not in exclude
        ]
        return found if len(found) == count else None

    return wait_for(f"{count} running pod(s) of {app}", check, 240)


@dataclasses.dataclass(frozen=True)
class Before:
    """A pod as it was before the disruption."""

    app: str
    name: str
    uid: str
    node: str
    tags: frozenset[str]
    last: int


def before(cluster: Cluster, namespace: str, pod: dict[str, Any], at_least: int = 10) -> Before:
    """Wait until the pod's counter printed `at_least`; what it had counted then."""
    name = pod["metadata"]["name"]

    def check() -> list[int] | None:
        seen = counts(logs(cluster, namespace, name))
        return seen if seen and seen[-1] >= at_least else None

    wait_for(f"{name} counting to {at_least}", check, 120)
    text = logs(cluster, namespace, name)
    return Before(
        pod["metadata"]["labels"]["app"],
        name,
        pod["metadata"]["uid"],
        pod["spec"]["nodeName"],
        frozenset(tags(text)),
        counts(text)[-1],
    )


def carried_on(cluster: Cluster, namespace: str, pod: dict[str, Any], old: Before) -> int:
    """The replacement runs the old process tree (same tag) on another node; its first count.
    Whether the count went on from the old pod's last one (a checkpoint at SIGTERM) or from an
    earlier one (a periodic checkpoint) is for the caller to say."""
    name = pod["metadata"]["name"]
    node = pod["spec"]["nodeName"]
    assert node != old.node, f"{name} came back on the node it left ({node})"
    seen = wait_for(f"{name} counting", lambda: counts(logs(cluster, namespace, name)), 120)
    text = logs(cluster, namespace, name)
    assert tags(text) == old.tags, f"{name} runs another process tree: {tags(text)} != {old.tags}"
    return seen[0]


def pod_events(cluster: Cluster, namespace: str, uid: str) -> list[dict[str, Any]]:
    """The Events about the pod with this uid (a StatefulSet's replacement has its
    predecessor's name), oldest first."""
    found = get(cluster, namespace, "events") or {"items": []}
    mine = [e for e in found["items"] if e["involvedObject"].get("uid") == uid]
    mine.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return mine


def reasons(cluster: Cluster, namespace: str, uid: str) -> list[str]:
    return [e["reason"] for e in pod_events(cluster, namespace, uid)]


def wait_reason(
    cluster: Cluster, namespace: str, uid: str, reason: str, *, says: str = "", timeout: float = 90
) -> dict[str, Any]:
    """The first Event of `reason` about the pod (whose message contains `says`)."""

    def check() -> dict[str, Any] | None:
        for event in pod_events(cluster, namespace, uid):
            if event["reason"] == reason and says in event.get("message", ""):
                return event
        return None

    return wait_for(f"a {reason} event ({says}) on pod {uid}", check, timeout)
