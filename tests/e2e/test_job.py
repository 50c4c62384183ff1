"""The user guide's first example on a real node: a Job whose pod is deleted mid-run resumes
in its replacement (the counter continues) and completes."""

from __future__ import annotations

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

from podckpt.devtools.cluster.cluster import Cluster

pytestmark = [pytest.mark.node, pytest.mark.slow]

COUNT_TO = 150


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
