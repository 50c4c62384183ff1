"""Settings from the namespace and volumes that follow their workload (issue 10), on a real
node with the operator in-cluster:

- a namespace with `checkpoint-mode=true` and `checkpoint-interval=10s` and an unlabelled
  StatefulSet: periodic checkpoints appear, the deleted pod is restored, and each restored pod
  gets exactly one `Restored` Event;
- a StatefulSet deleted and recreated under the same name: its new pod restores nothing of
  the old one and is not left Pending (the old PVC goes, a new one comes);
- no `FailedScheduling` warning for a checkpoint PVC that the controller has not created yet
  (the pod waits behind a scheduling gate instead).
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
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
    tags,
    wait_for,
)

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


def _delete_and_follow(cluster: Cluster, ns: str, app: str) -> tuple[str, str]:
    """Delete the running pod of `app`; (old log, log of its running replacement)."""
    name, uid = running_pod(cluster, ns, f"app={app}", set()).split("/")
    counted(cluster, ns, name, 5)
    before = logs(cluster, ns, name)
    cluster.kubectl("delete", "pod", "-n", ns, name, "--wait=false")
    name = running_pod(cluster, ns, f"app={app}", {uid}).split("/")[0]
    counted(cluster, ns, name, 1)
    return before, logs(cluster, ns, name)


def _namespace_defaults(cluster: Cluster, ns: str, image: str) -> None:
    # the namespace opts in, with a periodic checkpoint; the StatefulSet says nothing
    apply(cluster, ns, _statefulset("quiet", image, {}))
    name = running_pod(cluster, ns, "app=quiet", set()).split("/")[0]

    def periodic() -> list[dict[str, Any]] | None:
        lines = phase_lines(logs(cluster, ns, name))
        dumps = [p for p in lines if p["phase"] == "dump" and p.get("reason") == "periodic"]
        return dumps if len(dumps) >= 2 else None

    wait_for("two periodic checkpoints (namespace checkpoint-interval)", periodic, 90)
    for _ in range(2):  # restored twice: the middle pod is restored, then checkpointed again
        before, after = _delete_and_follow(cluster, ns, "quiet")
        assert tags(after) == tags(before), "not restored although the namespace opts in"
        assert counts(after)[0] > counts(before)[-1]

    def restored_once() -> collections.Counter[str] | None:
        per_pod = collections.Counter(
            e["involvedObject"]["uid"] for e in events(cluster, ns, "Restored")
        )
        return per_pod if len(per_pod) >= 2 else None

    per_pod = wait_for("Restored events of both replacements", restored_once, 90)
    assert set(per_pod.values()) == {1}, f"a fact announced twice: {per_pod}"


def _recreated(cluster: Cluster, ns: str, image: str) -> None:
    manifest = _statefulset("again", image, {f"{P}checkpoint-mode": "true"})
    apply(cluster, ns, manifest)
    name, uid = running_pod(cluster, ns, "app=again", set()).split("/")
    counted(cluster, ns, name, 5)
    old_tags = tags(logs(cluster, ns, name))
    # a Helm reinstall, a GitOps prune: deleted (the old pod checkpoints into the old PVC,
    # which garbage collection deletes) and created again at once under the same name
    cluster.kubectl("delete", "statefulset", "-n", ns, "again", "--wait=false")
    wait_for("the old StatefulSet gone", lambda: get(cluster, ns, "statefulset", "again") is None)
    apply(cluster, ns, manifest)
    new = running_pod(cluster, ns, "app=again", {uid}).split("/")[0]
    counted(cluster, ns, new, 3)
    text = logs(cluster, ns, new)
    assert counts(text)[0] == 1, "restored the deleted workload's state"
    assert not tags(text) & old_tags
    assert not [p for p in phase_lines(text) if p["phase"] == "restore" and p["outcome"] == "ok"]
    owner = get(cluster, ns, "statefulset", "again")["metadata"]["uid"]
    claim = get(cluster, ns, "pvc", "podckpt-statefulset-again-0")
    assert [r["uid"] for r in claim["metadata"]["ownerReferences"]] == [owner]
    assert not claim["metadata"].get("deletionTimestamp")


def test_namespace_defaults_and_volumes_that_follow_their_workload(
    operator: Cluster, namespace: str, app_image: str
) -> None:
    second = operator.create_namespace(f"{namespace}-b")
    try:
        operator.kubectl(
            "label", "namespace", namespace,
            f"{P}checkpoint-mode=true", f"{P}checkpoint-interval=10s",
        )  # fmt: skip
        wait_for(
            "the namespace keys to reach the webhook",
            lambda: _injected_in(operator, namespace, app_image),
            60,
        )
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            jobs = [
                pool.submit(_namespace_defaults, operator, namespace, app_image),
                pool.submit(_recreated, operator, second, app_image),
            ]
            for job in jobs:
                job.result()
        for ns in (namespace, second):
            failed = [
                e["message"]
                for e in events(operator, ns, "FailedScheduling")
                if "persistentvolumeclaim" in e["message"].lower()
            ]
            assert not failed, f"the scheduler looked for a missing checkpoint PVC: {failed}"
    finally:
        operator.kubectl("delete", "namespace", second, "--wait=false", check=False)


def _injected_in(cluster: Cluster, ns: str, image: str) -> bool:
    """Whether an unlabelled pod would be injected now (a server-side dry run: the webhook
    answers, nothing is created)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "annotations": {f"{P}checkpoint-storage-volume": "x"}},
        "spec": {"containers": [container(image)], "volumes": [{"name": "x", "emptyDir": {}}]},
    }
    out = cluster.kubectl(
        "create", "-n", ns, "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(pod)
    )
    return "podckpt.io/injected" in json.loads(out.stdout)["metadata"].get("annotations", {})
