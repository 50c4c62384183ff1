"""Disruptions across two nodes (issue 9.5): a pod moved off its node comes back on the other
one with its state. Each test places its workloads on the second node (the operator runs on the
first), disrupts that node the way Kubernetes or the machine would, and checks three things:
the replacement runs on the other node, it runs the *same* process tree (the counter's random
tag, held only in memory) counting on from where it stopped, and the Events say so."""

from __future__ import annotations

import json

import pytest
from disruptkit import (
    FIRST,
    SECOND,
    apply_all,
    before,
    carried_on,
    deployment,
    job,
    only_on,
    reasons,
    running,
    statefulset,
    wait_reason,
)
from e2ehelpers import counts, get, logs, pods, tags, wait_for

from podckpt.devtools.cluster.cluster import Cluster

pytestmark = [pytest.mark.node, pytest.mark.multinode, pytest.mark.slow]


def test_drain_moves_statefulset_deployment_and_job_pods_with_their_state(
    operator: Cluster, nodes: Cluster, namespace: str, app_image: str
) -> None:
    """`kubectl drain` (the Eviction API, a PodDisruptionBudget in place) of the node running a
    StatefulSet pod, two Deployment replicas and a Job pod: all restore on the other node.
    The Deployment also has `limits.ephemeral-storage: 40Mi` and writes nothing: the 45 MB
    bundle must not get it evicted (the webhook raises the limit by the bundle's size)."""
    del operator
    web = deployment("web", app_image, replicas=2)
    web["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["ephemeral-storage"] = (
        "40Mi"
    )
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "web"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
    }
    with only_on(nodes, SECOND):
        apply_all(nodes, namespace, statefulset("db", app_image), web, pdb, job("batch", app_image))
        placed = [
            *running(nodes, namespace, "db", 1, set()),
            *running(nodes, namespace, "web", 2, set()),
            *running(nodes, namespace, "batch", 1, set()),
        ]
    old = {p["metadata"]["uid"]: before(nodes, namespace, p) for p in placed}
    assert {b.node for b in old.values()} == {SECOND}

    nodes.kubectl(
        "drain", SECOND, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=300s",
        timeout=330,
    )  # fmt: skip

    for app, count in (("db", 1), ("web", 2), ("batch", 1)):
        olds = [b for b in old.values() if b.app == app]
        new = running(nodes, namespace, app, count, {b.uid for b in olds})
        by_name = {p["metadata"]["name"]: p for p in new}
        for b in olds:
            # the StatefulSet pod and each Deployment slot come back under the same name
            pod = by_name.get(b.name) or new[0]
            assert pod["spec"]["nodeName"] == FIRST
            first = carried_on(nodes, namespace, pod, b)
            assert first > b.last, f"{pod['metadata']['name']} went back to {first} (< {b.last})"
            wait_reason(nodes, namespace, b.uid, "CheckpointCommitted")
            wait_reason(nodes, namespace, pod["metadata"]["uid"], "Restored")

    evicted = [
        p["metadata"]["name"]
        for p in pods(nodes, namespace, "app=web")
        if p["status"].get("reason") == "Evicted"
    ]
    assert not evicted, f"pods evicted over their ephemeral-storage limit: {evicted}"


def _cpu_millis(text: str) -> int:
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


def test_preemption_moves_a_checkpointed_pod_with_its_state(
    operator: Cluster, nodes: Cluster, namespace: str, app_image: str
) -> None:
    """A higher-priority pod that needs the node evicts a checkpointed pod (the scheduler's
    preemption: a graceful delete); its replacement restores on the other node."""
    del operator
    node = get(nodes, "", "node", SECOND)
    share = _cpu_millis(node["status"]["allocatable"]["cpu"]) * 6 // 10
    classes = [
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": f"{namespace}-{name}"},
            "value": value,
        }
        for name, value in (("low", 10), ("high", 100000))
    ]
    victim = deployment("victim", app_image)
    victim["spec"]["template"]["spec"]["priorityClassName"] = f"{namespace}-low"
    victim["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] = {
        "cpu": f"{share}m"
    }
    nodes.kubectl(
        "apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1", "items": classes})
    )
    try:
        with only_on(nodes, SECOND):
            apply_all(nodes, namespace, victim)
            (pod,) = running(nodes, namespace, "victim", 1, set())
        old = before(nodes, namespace, pod)
        important = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "important", "labels": {"app": "important"}},
            "spec": {
                "priorityClassName": f"{namespace}-high",
                "nodeSelector": {"kubernetes.io/hostname": SECOND},
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "c",
                        "image": app_image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
                        "resources": {"requests": {"cpu": f"{share}m"}},
                    }
                ],
            },
        }
        apply_all(nodes, namespace, important)
        (new,) = running(nodes, namespace, "victim", 1, {old.uid})
        assert new["spec"]["nodeName"] == FIRST
        first = carried_on(nodes, namespace, new, old)
        assert first > old.last
        running(nodes, namespace, "important", 1, set())
        wait_reason(nodes, namespace, old.uid, "Preempted")
        wait_reason(nodes, namespace, old.uid, "CheckpointCommitted")
        wait_reason(nodes, namespace, new["metadata"]["uid"], "Restored")
    finally:
        nodes.kubectl("delete", "pod", "important", "-n", namespace, "--wait=false", check=False)
        for pc in classes:
            nodes.kubectl("delete", "priorityclass", pc["metadata"]["name"], check=False)


def test_graceful_node_shutdown_fails_the_pod_and_its_replacement_restores(
    operator: Cluster, nodes: Cluster, namespace: str, app_image: str
) -> None:
    """The kubelet's graceful node shutdown (`hack/cluster.sh node stop`) SIGTERMs the pod and
    marks it Failed under its name; the Deployment's replacement takes its slot under the
    slot's next name and restores the checkpoint written at that SIGTERM."""
    del operator
    with only_on(nodes, SECOND):
        apply_all(nodes, namespace, deployment("gs", app_image))
        (pod,) = running(nodes, namespace, "gs", 1, set())
    old = before(nodes, namespace, pod)
    nodes.stop_node(SECOND)
    stopped = get(nodes, namespace, "pod", old.name)
    assert stopped["status"]["phase"] == "Failed", stopped["status"]
    (new,) = running(nodes, namespace, "gs", 1, {old.uid})
    assert new["metadata"]["name"] == "gs-slot-0-1"
    first = carried_on(nodes, namespace, new, old)
    assert first > old.last
    wait_reason(nodes, namespace, old.uid, "CheckpointCommitted")
    wait_reason(nodes, namespace, new["metadata"]["uid"], "Restored")


def test_scaled_to_zero_and_updated_nothing_restores_into_the_new_template(
    operator: Cluster, nodes: Cluster, namespace: str, app_image: str
) -> None:
    """2 → 0 (both replicas checkpoint) → a rolling update → 2: the new pods take the same
    slots, but a checkpoint of the old template is never restored into the new one."""
    del operator
    apply_all(nodes, namespace, deployment("roll", app_image, replicas=2))
    olds = [before(nodes, namespace, p) for p in running(nodes, namespace, "roll", 2, set())]
    nodes.kubectl("scale", "deployment/roll", "-n", namespace, "--replicas=0")
    for b in olds:
        wait_reason(nodes, namespace, b.uid, "CheckpointCommitted")
    wait_for("no pod of roll", lambda: not pods(nodes, namespace, "app=roll"), 120)
    nodes.kubectl("set", "env", "deployment/roll", "-n", namespace, "VERSION=v2")
    nodes.kubectl("scale", "deployment/roll", "-n", namespace, "--replicas=2")
    new = running(nodes, namespace, "roll", 2, {b.uid for b in olds})
    assert sorted(p["metadata"]["name"] for p in new) == sorted(b.name for b in olds)
    old_tags = set().union(*(b.tags for b in olds))
    for pod in new:
        name = pod["metadata"]["name"]
        seen = wait_for(f"{name} counting", lambda n=name: _counts(nodes, namespace, n), 120)
        assert seen[0] == 1, f"{name} started at {seen[0]}: an old checkpoint was restored"
        assert not (_tags(nodes, namespace, name) & old_tags)
        wait_reason(nodes, namespace, pod["metadata"]["uid"], "StartedFresh", says="NewRevision")
        assert "Restored" not in reasons(nodes, namespace, pod["metadata"]["uid"])


def _counts(cluster: Cluster, namespace: str, name: str) -> list[int]:
    return counts(logs(cluster, namespace, name))


def _tags(cluster: Cluster, namespace: str, name: str) -> set[str]:
    return tags(logs(cluster, namespace, name))
