"""The user guide's first example on a real node: a Job whose pod is deleted mid-run resumes
in its replacement (the counter continues) and completes."""

from __future__ import annotations

from typing import Any

import pytest
from e2ehelpers import (
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
    wait_for,
)

from podckpt.agent.exitcodes import CHECKPOINTED
from podckpt.devtools.cluster.cluster import Cluster

pytestmark = [pytest.mark.node, pytest.mark.slow]

COUNT_TO = 150


def pod_failure_policy(container_name: str) -> dict[str, Any]:
    """docs/user-guide.md's podFailurePolicy (a unit test holds the guide to this constant)."""
    return {
        "rules": [
            {
                "action": "Ignore",
                "onExitCodes": {
                    "containerName": container_name,
                    "operator": "In",
                    "values": [CHECKPOINTED],
                },
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]
    }


def test_job_resumes_after_its_pod_is_deleted(
    operator: Cluster, namespace: str, app_image: str
) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "counter"},
        "spec": {
            "backoffLimit": 3,
            "template": {
                "metadata": {
                    "labels": {
                        "app": "counter",
                        f"{P}checkpoint-mode": "true",
                        f"{P}checkpoint-volume-size": "2Gi",
                    }
                },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container(app_image, count_to=COUNT_TO)],
                },
            },
        },
    }
    apply(operator, namespace, job)
    first = running_pod(operator, namespace, "app=counter", set())
    name, uid = first.split("/")
    before = counted(operator, namespace, name, 15)
    operator.kubectl("delete", "pod", "-n", namespace, name, "--wait=false")

    second = running_pod(operator, namespace, "app=counter", {uid})
    name2 = second.split("/")[0]
    counted(operator, namespace, name2, 1)
    seen = counts(logs(operator, namespace, name2))
    assert seen[0] > before, f"the new pod restarted from {seen[0]} (the old one was at {before})"
    restore = [p for p in phase_lines(logs(operator, namespace, name2)) if p["phase"] == "restore"]
    assert restore, "no restore phase line in the new pod's log"
    assert restore[0]["outcome"] == "ok", restore

    def complete() -> bool:
        status = (get(operator, namespace, "job", "counter") or {}).get("status", {})
        return any(
            c["type"] == "Complete" and c["status"] == "True" for c in status.get("conditions", [])
        )

    wait_for("the Job completes", complete, 120)
    assert counts(logs(operator, namespace, name2))[-1] == COUNT_TO
    claims = get(operator, namespace, "pvc")["items"]
    assert [c["spec"]["resources"]["requests"]["storage"] for c in claims] == ["2Gi"]
    wait_for("a Restored event", lambda: events(operator, namespace, "Restored"), 60)


def test_job_with_pod_failure_policy_survives_repeated_deletions_with_backoff_limit_0(
    operator: Cluster, namespace: str, app_image: str
) -> None:
    """The user guide's podFailurePolicy: the agent's checkpoint exit code (and an eviction's
    DisruptionTarget condition) do not count against backoffLimit, so a Job with
    `backoffLimit: 0` survives its pod being deleted twice and still completes."""
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "strict"},
        "spec": {
            "backoffLimit": 0,
            "podFailurePolicy": pod_failure_policy("app"),
            "template": {
                "metadata": {
                    "labels": {
                        "app": "strict",
                        f"{P}checkpoint-mode": "true",
                        f"{P}checkpoint-volume-size": "1Gi",
                    }
                },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container(app_image, count_to=COUNT_TO)],
                },
            },
        },
    }
    apply(operator, namespace, job)
    seen: set[str] = set()
    last = 0
    for _ in range(2):
        name, uid = running_pod(operator, namespace, "app=strict", seen).split("/")
        seen.add(uid)
        last = counted(operator, namespace, name, last + 10)
        operator.kubectl("delete", "pod", "-n", namespace, name, "--wait=false")
    name, uid = running_pod(operator, namespace, "app=strict", seen).split("/")
    counted(operator, namespace, name, last + 1)
    assert counts(logs(operator, namespace, name))[0] > last, "the third pod did not restore"

    def finished() -> str | None:
        status = (get(operator, namespace, "job", "strict") or {}).get("status", {})
        for c in status.get("conditions", []):
            if c["type"] in ("Complete", "Failed") and c["status"] == "True":
                return str(c["type"])
        return None

    assert wait_for("the Job finishes", finished, 120) == "Complete"
    assert counts(logs(operator, namespace, name))[-1] == COUNT_TO
