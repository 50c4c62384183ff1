"""`kubectl drain` of the node that runs the operator's own pods (issue 14.4), on two nodes.

The webhook fails closed for opted-in pods, so a drain that took both its replicas at once
would leave the drained node's checkpointed pods without admission; a PodDisruptionBudget that
could never be satisfied would stall the drain. The chart's answer (docs/operations.md, "Drains
never stall on the webhook"): two replicas, a PDB letting one go at a time, replacements that
never need the webhook. Here both webhook replicas and both controllers run on the first node
together with a checkpointed StatefulSet pod; the drain of that node must finish, the operator
must come up on the other node, and the StatefulSet's replacement must be admitted, injected
and restored there (the same process tree, counting on)."""

from __future__ import annotations

import pytest
from disruptkit import FIRST, SECOND, apply_all, before, carried_on, only_on, running, statefulset
from e2ehelpers import get, wait_for

from podckpt.devtools import operator_install
from podckpt.devtools.cluster.cluster import Cluster
from podckpt.devtools.operator_install import NAMESPACE

pytestmark = [pytest.mark.node, pytest.mark.multinode, pytest.mark.slow]


def _operator_nodes(cluster: Cluster) -> dict[str, str]:
    """Pod name -> node of the operator's pods that are not terminating."""
    found = get(cluster, NAMESPACE, "pods") or {"items": []}
    return {
        p["metadata"]["name"]: p["spec"].get("nodeName", "")
        for p in found["items"]
        if not p["metadata"].get("deletionTimestamp")
    }


def test_drain_of_the_operators_node_finishes_and_its_pods_restore_on_the_other(
    operator: Cluster, nodes: Cluster, namespace: str, app_image: str
) -> None:
    # The e2e fixture pins the operator to the first node (the node-loss tests kill the
    # second); here it may go anywhere, as installed by default. Its new pods start on the
    # first node all the same (the second is cordoned meanwhile).
    with only_on(nodes, FIRST):
        operator_install.place(operator, None)
    try:
        webhook = get(nodes, NAMESPACE, "deployment", "podckpt-webhook") or {}
        assert not webhook["spec"]["template"]["spec"].get("nodeSelector"), "unpinned"
        assert set(_operator_nodes(nodes).values()) == {FIRST}, _operator_nodes(nodes)
        with only_on(nodes, FIRST):
            apply_all(nodes, namespace, statefulset("held", app_image))
            (pod,) = running(nodes, namespace, "held", 1, set())
        old = before(nodes, namespace, pod)
        assert old.node == FIRST

        drained = nodes.kubectl(
            "drain", FIRST, "--ignore-daemonsets", "--delete-emptydir-data", "--force",
            "--timeout=180s", check=False, timeout=210,
        )  # fmt: skip
        if drained.returncode != 0:
            state = nodes.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False)
            described = nodes.kubectl("describe", "pods", "-n", NAMESPACE, check=False)
            pytest.fail(
                f"the drain stalled:\n{drained.stderr[-1500:]}\n{state.stdout}\n"
                f"{described.stdout[-6000:]}\n{operator_install.logs(nodes)[-6000:]}"
            )

        # Available again, and every one of its pods (replacements may still be starting
        # when the drain returns) on the other node.
        operator_install.wait_serving(nodes, 120)
        wait_for(
            "the operator's pods on the other node",
            lambda: set(_operator_nodes(nodes).values()) == {SECOND},
            120,
        )
        (new,) = running(nodes, namespace, "held", 1, {old.uid})
        annotations = new["metadata"].get("annotations") or {}
        assert annotations.get("podckpt.io/injected"), "admitted by the webhook on the other node"
        first_count = carried_on(nodes, namespace, new, old)
        assert first_count > old.last, (first_count, old.last)
    finally:
        nodes.kubectl("uncordon", FIRST)
        operator_install.place(operator, FIRST)
    assert set(_operator_nodes(nodes).values()) == {FIRST}, _operator_nodes(nodes)
