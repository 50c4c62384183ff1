"""A checkpoint comes back only in a new pod of the same workload revision (issue 10), on a
real node with the operator in-cluster:

- a container restarted inside its pod (liveness probe, OOM kill) starts fresh, says why
  (`StartedFresh` ... SamePod), and does not loop;
- a pod of a new revision (`kubectl rollout restart`, a changed env, a StatefulSet rolling
  update) starts fresh (`StartedFresh` ... NewRevision).
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import pytest
from e2ehelpers import (
    COUNTER,
    P,
    apply,
    container,
    counted,
    counts,
    events,
    get,
    logs,
    phase_lines,
    running_pod,
    tags,
    wait_for,
)

from podckpt.api.contract import ExitCode
from podckpt.devtools.cluster.cluster import Cluster

pytestmark = [pytest.mark.node, pytest.mark.slow]

ON = {f"{P}checkpoint-mode": "true"}
#: The counter, which eats memory until it is OOM-killed once /tmp/hog exists.
HOG = 'if [ -e /tmp/hog ]; then x=$(head -c 400000000 /dev/zero | tr "\\0" x); fi; '


def _statefulset(name: str, spec_container: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, **ON}},
                "spec": {"containers": [spec_container]},
            },
        },
    }


def _status(cluster: Cluster, ns: str, pod: str) -> dict[str, Any]:
    found = get(cluster, ns, "pod", pod) or {}
    statuses = found.get("status", {}).get("containerStatuses") or [{}]
    return dict(statuses[0])


def _restarted(cluster: Cluster, ns: str, pod: str, count: int) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status = _status(cluster, ns, pod)
        running = "running" in (status.get("state") or {})
        return status if status.get("restartCount", 0) >= count and running else None

    return wait_for(f"{pod} restarted {count} time(s) and running", check, 180)


def _fresh_because(cluster: Cluster, ns: str, pod: str, cause: str, count: int = 1) -> None:
    def check() -> list[dict[str, Any]] | None:
        found = [
            e
            for e in events(cluster, ns, "StartedFresh")
            if e["involvedObject"]["name"] == pod and cause in e["message"]
        ]
        return found if len(found) >= count else None

    wait_for(f"{count} StartedFresh ({cause}) event(s) on {pod}", check, 90)


def _restarted_inside_its_pod(operator: Cluster, namespace: str, app_image: str) -> None:
    app = container(app_image)
    app["command"] = ["/bin/sh", "-c", COUNTER.replace("i=$((i+1));", HOG + "i=$((i+1));")]
    app["livenessProbe"] = {
        "exec": {"command": ["/bin/sh", "-c", "test ! -e /tmp/unhealthy"]},
        "periodSeconds": 1,
        "failureThreshold": 1,
    }
    apply(operator, namespace, _statefulset("sick", app))
    running_pod(operator, namespace, "app=sick", set())
    counted(operator, namespace, "sick-0", 5)
    before = tags(logs(operator, namespace, "sick-0"))

    # The liveness probe fails: the kubelet's SIGTERM is a deletion's to the agent, which
    # checkpoints (exit 202); the restarted container does not resume the sick process.
    operator.kubectl(
        "exec", "-n", namespace, "sick-0", "-c", "app", "--", "touch", "/tmp/unhealthy"
    )
    status = _restarted(operator, namespace, "sick-0", 1)
    assert status["lastState"]["terminated"]["exitCode"] == ExitCode.CHECKPOINTED
    counted(operator, namespace, "sick-0", 3)
    text = logs(operator, namespace, "sick-0")
    assert counts(text)[0] == 1, f"resumed: {counts(text)[:3]}"
    assert not tags(text) & before
    (skipped,) = [p for p in phase_lines(text) if p["phase"] == "restore"]
    assert (skipped["outcome"], skipped["cause"]) == ("skipped", "SamePod")
    _fresh_because(operator, namespace, "sick-0", "SamePod")
    # no restore loop: the fresh process is healthy and stays
    time.sleep(5)
    assert _status(operator, namespace, "sick-0")["restartCount"] == 1

    # An OOM kill (of the application, or of the whole container on cgroup v2) after a
    # checkpoint of this pod: the restarted container starts fresh too.
    operator.kubectl(
        "exec", "-n", namespace, "sick-0", "-c", "app", "--",
        "/.podckpt/bin/podckpt-agent", "checkpoint",
    )  # fmt: skip
    middle = tags(logs(operator, namespace, "sick-0"))
    operator.kubectl("exec", "-n", namespace, "sick-0", "-c", "app", "--", "touch", "/tmp/hog")
    status = _restarted(operator, namespace, "sick-0", 2)
    assert status["lastState"]["terminated"]["exitCode"] == 137, status["lastState"]
    counted(operator, namespace, "sick-0", 3)
    text = logs(operator, namespace, "sick-0")
    assert counts(text)[0] == 1
    assert not tags(text) & middle
    assert not [p for p in phase_lines(text) if p["phase"] == "restore" and p["outcome"] == "ok"]


def _deployment(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            # the new pod takes the old pod's slot, whose checkpoint it must not restore
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, **ON}},
                "spec": {"containers": [container(image)]},
            },
        },
    }


def _replaced_fresh(cluster: Cluster, ns: str, app: str, old_uid: str, old_tags: set[str]) -> str:
    name, uid = running_pod(cluster, ns, f"app={app}", {old_uid}).split("/")
    counted(cluster, ns, name, 3)
    text = logs(cluster, ns, name)
    assert counts(text)[0] == 1, f"{name} resumed the old revision: {counts(text)[:3]}"
    assert not tags(text) & old_tags
    _fresh_because(cluster, ns, name, "NewRevision")
    return uid


def _new_revisions(operator: Cluster, namespace: str, app_image: str) -> None:
    apply(operator, namespace, _deployment("roll", app_image))
    apply(operator, namespace, _statefulset("upd", container(app_image)))
    first = {
        app: running_pod(operator, namespace, f"app={app}", set()).split("/")
        for app in ("roll", "upd")
    }
    for name, _ in first.values():
        counted(operator, namespace, name, 5)
    old_tags = {app: tags(logs(operator, namespace, name)) for app, (name, _) in first.items()}

    # `kubectl rollout restart` (an annotation of the template) and a StatefulSet rolling
    # update (a changed env), waited for in parallel
    operator.kubectl("rollout", "restart", "-n", namespace, "deployment/roll")
    operator.kubectl("set", "env", "-n", namespace, "statefulset/upd", "VERSION=v2")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        done = {
            app: pool.submit(_replaced_fresh, operator, namespace, app, uid, old_tags[app])
            for app, (_, uid) in first.items()
        }
        second = {app: future.result() for app, future in done.items()}

    # a changed env on the Deployment: the new pod runs with it, fresh
    name = running_pod(operator, namespace, "app=roll", set()).split("/")[0]
    counted(operator, namespace, name, 5)
    now = tags(logs(operator, namespace, name))
    operator.kubectl("set", "env", "-n", namespace, "deployment/roll", "VERSION=v2")
    _replaced_fresh(operator, namespace, "roll", second["roll"], now)


def test_restarts_inside_a_pod_and_new_revisions_start_fresh(
    operator: Cluster, namespace: str, app_image: str
) -> None:
    """Both scenarios at once, in one namespace (their waits overlap: CI time)."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        jobs = [
            pool.submit(scenario, operator, namespace, app_image)
            for scenario in (_restarted_inside_its_pod, _new_revisions)
        ]
        for job in jobs:
            job.result()
