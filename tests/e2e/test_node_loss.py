"""Node loss (issue 9.4): the node dies (`hack/cluster.sh node kill`: SIGKILL to its kubelet,
runtime and containers, no SIGTERM to anything), so nothing is dumped. With
`checkpoint-interval: 20s` the pod is restored on the other node from its latest periodic
checkpoint once Kubernetes has evicted it: a Deployment replica by itself (its replacement
takes the slot once the lost pod is past its deadline), a StatefulSet pod once it is
force-deleted (Kubernetes never replaces it before). At most one interval of work is lost."""

from __future__ import annotations

import time

import pytest
from disruptkit import (
    FIRST,
    SECOND,
    apply_all,
    before,
    carried_on,
    deployment,
    only_on,
    running,
    statefulset,
    wait_reason,
)
from e2ehelpers import counts, get, logs, phase_lines, wait_for

from podckpt.devtools.cluster.cluster import Cluster

pytestmark = [pytest.mark.node, pytest.mark.multinode, pytest.mark.slow]

INTERVAL_S = 20
#: The counter prints a line every 0.2 s (plus the shell's own time): counts per second, at most.
COUNTS_PER_S = 5
#: How long these pods tolerate an unreachable node (the cluster's default here is 30 s,
#: production's 300 s): shorter, to keep the test short; the path is the same.
TOLERATION_S = 10


def _tolerate(doc: dict[str, object]) -> dict[str, object]:
    spec = doc["spec"]["template"]["spec"]  # type: ignore[index]
    spec["tolerations"] = [
        {
            "key": f"node.kubernetes.io/{taint}",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": TOLERATION_S,
        }
        for taint in ("unreachable", "not-ready")
    ]
    return doc


def _periodic_commits(cluster: Cluster, namespace: str, pod: str) -> int:
    """Checkpoints committed by the running pod (before any SIGTERM, all are periodic)."""
    lines = phase_lines(logs(cluster, namespace, pod))
    return sum(1 for line in lines if (line["phase"], line["outcome"]) == ("commit", "ok"))


def test_killed_node_pods_restore_their_last_periodic_checkpoint_elsewhere(
    operator: Cluster, nodes: Cluster, namespace: str, app_image: str
) -> None:
    del operator
    keys = {"checkpoint_interval": f"{INTERVAL_S}s"}
    web = _tolerate(deployment("lost", app_image, **keys))
    db = _tolerate(statefulset("lostdb", app_image, **keys))
    with only_on(nodes, SECOND):
        apply_all(nodes, namespace, web, db)
        placed = [
            *running(nodes, namespace, "lost", 1, set()),
            *running(nodes, namespace, "lostdb", 1, set()),
        ]
    names = [p["metadata"]["name"] for p in placed]
    for name in names:
        wait_for(
            f"a periodic checkpoint of {name}",
            lambda n=name: _periodic_commits(nodes, namespace, n),
            90,
        )
    olds = {b.app: b for b in (before(nodes, namespace, p) for p in placed)}

    # what each had counted when the node died (its kubelet serves no log afterwards)
    at_kill = {b.app: counts(logs(nodes, namespace, b.name))[-1] for b in olds.values()}
    killed = time.monotonic()
    nodes.kill_node(SECOND)

    # the StatefulSet pod: evicted (Terminating forever, nobody confirms it), then force-deleted
    db_old = olds["lostdb"]
    wait_for(
        "the lost StatefulSet pod evicted",
        lambda: (
            (get(nodes, namespace, "pod", db_old.name) or {})
            .get("metadata", {})
            .get("deletionTimestamp")
        ),
        120,
    )
    evicted = time.monotonic() - killed
    nodes.kubectl("delete", "pod", db_old.name, "-n", namespace, "--force", "--grace-period=0")

    lost, back = {}, {}
    for app in ("lostdb", "lost"):
        old = olds[app]
        (new,) = running(nodes, namespace, app, 1, {old.uid})
        back[app] = round(time.monotonic() - killed)
        assert new["spec"]["nodeName"] == FIRST
        if app == "lost":  # the lost pod keeps its name: the slot's next one
            assert new["metadata"]["name"] == "lost-slot-0-1"
        first = carried_on(nodes, namespace, new, old)
        # restored from a periodic checkpoint: from before the kill (a second of margin for
        # the counts between the log read and the kill), at most one interval earlier
        lost[app] = at_kill[app] - first
        assert lost[app] >= -COUNTS_PER_S, f"{app} restored {first}, after the kill ({at_kill})"
        assert lost[app] <= (INTERVAL_S + 5) * COUNTS_PER_S, f"{app} lost {lost[app]} counts"
        wait_reason(nodes, namespace, new["metadata"]["uid"], "Restored")
    print(
        f"node kill: evicted {evicted:.0f} s after the kill; back (running, restoring) after"
        f" {back} s; counts lost {lost} (one count per 0.2 s)"
    )
