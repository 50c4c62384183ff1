"""Labels changed on running pods that carry the agent take effect live (ARCHITECTURE §2):
removing `checkpoint-mode` from an opted-in pod means no checkpoint (its replacement starts
fresh); adding it to a dormant pod of an injection namespace means a checkpoint."""

from __future__ import annotations

import time
from typing import Any

import pytest
from e2ehelpers import P, apply, container, counted, counts, logs, phase_lines, running_pod, tags

from podckpt.devtools.cluster.cluster import Cluster

pytestmark = [pytest.mark.node, pytest.mark.slow]


def _statefulset(name: str, image: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, **labels}},
                "spec": {"containers": [container(image)]},
            },
        },
    }


def _cycle(cluster: Cluster, ns: str, name: str, label: list[str]) -> tuple[str, str]:
    """Label the running pod, delete it; (old log, new log)."""
    pod = f"{name}-0"
    uid = running_pod(cluster, ns, f"app={name}", set()).split("/")[1]
    counted(cluster, ns, pod, 10)
    cluster.kubectl("label", "pod", "-n", ns, pod, *label, "--overwrite")
    before = logs(cluster, ns, pod)
    cluster.kubectl("delete", "pod", "-n", ns, pod, "--wait=false")
    running_pod(cluster, ns, f"app={name}", {uid})
    counted(cluster, ns, pod, 1)
    return before, logs(cluster, ns, pod)


def test_label_removed_live_means_a_fresh_replacement(
    operator: Cluster, namespace: str, app_image: str
) -> None:
    apply(operator, namespace, _statefulset("off", app_image, {f"{P}checkpoint-mode": "true"}))
    before, after = _cycle(operator, namespace, "off", [f"{P}checkpoint-mode-"])
    assert counts(after)[0] == 1, "restored although the label was removed"
    assert not tags(after) & tags(before)
    assert not [p for p in phase_lines(after) if p["phase"] == "restore" and p["outcome"] == "ok"]


def test_label_added_live_in_an_injection_namespace(
    operator: Cluster, namespace: str, app_image: str
) -> None:
    operator.kubectl("label", "namespace", namespace, f"{P}checkpoint-injection=enabled")
    time.sleep(3)  # the webhook learns namespace labels from a watch
    apply(operator, namespace, _statefulset("on", app_image, {}))
    before, after = _cycle(operator, namespace, "on", [f"{P}checkpoint-mode=true"])
    assert tags(after) == tags(before), "not restored although the label was added"
    assert counts(after)[0] > counts(before)[-1]
