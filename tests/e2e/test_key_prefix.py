"""A custom key prefix end to end (issue 10): the operator installed with
`PODCKPT_KEY_PREFIX=ckpt.example.com/` (both Deployments, the webhook configuration's
selectors) injects a pod labelled under that prefix, hands the prefix to the agent, and the
agent checkpoints and restores it; a `memverge.ai/` label means nothing there."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from e2ehelpers import P, apply, container, counted, counts, get, logs, running_pod, tags

from podckpt.devtools import operator_install
from podckpt.devtools.cluster.cluster import Cluster

pytestmark = [pytest.mark.node, pytest.mark.slow]

PREFIX = "ckpt.example.com/"


@pytest.fixture
def prefixed(operator: Cluster) -> Iterator[Cluster]:
    operator_install.set_key_prefix(operator, PREFIX)
    try:
        yield operator
    finally:
        operator_install.set_key_prefix(operator, P)


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


def test_custom_key_prefix(prefixed: Cluster, namespace: str, app_image: str) -> None:
    cluster = prefixed
    apply(cluster, namespace, _statefulset("mine", app_image, {f"{PREFIX}checkpoint-mode": "true"}))
    apply(cluster, namespace, _statefulset("theirs", app_image, {f"{P}checkpoint-mode": "true"}))
    name, uid = running_pod(cluster, namespace, "app=mine", set()).split("/")
    running_pod(cluster, namespace, "app=theirs", set())
    pod = get(cluster, namespace, "pod", name)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["PODCKPT_KEY_PREFIX"] == PREFIX
    theirs = get(cluster, namespace, "pod", "theirs-0")
    assert "podckpt.io/injected" not in theirs["metadata"].get("annotations", {})

    counted(cluster, namespace, name, 5)
    before = logs(cluster, namespace, name)
    cluster.kubectl("delete", "pod", "-n", namespace, name, "--wait=false")
    name = running_pod(cluster, namespace, "app=mine", {uid}).split("/")[0]
    counted(cluster, namespace, name, 1)
    after = logs(cluster, namespace, name)
    assert tags(after) == tags(before), "not restored under the custom prefix"
    assert counts(after)[0] > counts(before)[-1]
