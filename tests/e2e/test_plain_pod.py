"""A plain pod on the user's own volume, deleted and re-created by the user:
`checkpoint-storage-volume`, `checkpoint-containers` (the sidecar not listed starts fresh),
`checkpoint-diagnosis` (images and CRIU logs kept after the restore), `checkpoint-files`;
then a restore that cannot succeed (every image corrupted on purpose) starts the pod fresh
with a Warning event and no crash loop. And a running pod without the agent that is labelled
gets a NotInjected warning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from e2ehelpers import P, apply, container, counted, counts, events, get, logs, tags, wait_for

from podckpt.devtools.cluster.cluster import Cluster

pytestmark = [pytest.mark.node, pytest.mark.slow]


STATE_FILE = "/tmp/app-state"


def _pod(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "worker",
            "labels": {f"{P}checkpoint-mode": "true"},
            "annotations": {
                f"{P}checkpoint-storage-volume": "ckpt",
                f"{P}checkpoint-containers": "app",
                f"{P}checkpoint-diagnosis": "true",
                f"{P}checkpoint-files": STATE_FILE,
            },
        },
        "spec": {
            "containers": [
                container(image, state_file=STATE_FILE),
                container(image, name="sidecar"),
            ],
            "volumes": [{"name": "ckpt", "persistentVolumeClaim": {"claimName": "ckpt"}}],
        },
    }


def _claim() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "ckpt"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def _store(cluster: Cluster, namespace: str) -> Path:
    """The user's volume on this node (hostpath provisioner): tests read it directly."""
    claim = get(cluster, namespace, "pvc", "ckpt")
    volume = get(cluster, "default", "pv", claim["spec"]["volumeName"])
    return Path(volume["spec"]["hostPath"]["path"])


def _running_again(cluster: Cluster, namespace: str) -> None:
    def check() -> bool:
        pod = get(cluster, namespace, "pod", "worker") or {}
        statuses = pod.get("status", {}).get("containerStatuses", [])
        return len(statuses) == 2 and all("running" in s["state"] for s in statuses)

    wait_for("pod worker running", check, 180)


def test_plain_pod_on_its_storage_volume(operator: Cluster, namespace: str, app_image: str) -> None:
    apply(operator, namespace, _claim())
    apply(operator, namespace, _pod(app_image))
    _running_again(operator, namespace)
    counted(operator, namespace, "worker", 10)
    counted(operator, namespace, "worker", 10, "sidecar")
    app_before = logs(operator, namespace, "worker")
    side_before = logs(operator, namespace, "worker", "sidecar")
    operator.kubectl("delete", "pod", "-n", namespace, "worker", "--wait=true", timeout=180)

    # re-created by the user: the app resumes, the sidecar (not listed) starts fresh
    apply(operator, namespace, _pod(app_image))
    _running_again(operator, namespace)
    counted(operator, namespace, "worker", 1)
    app = logs(operator, namespace, "worker")
    side = counted(operator, namespace, "worker", 1, "sidecar")
    assert side >= 1
    assert tags(app) == tags(app_before)
    assert counts(app)[0] > counts(app_before)[-1]
    # checkpoint-files: the file the app wrote in its old container is back in the new one
    state = operator.kubectl(
        "exec", "-n", namespace, "worker", "-c", "app", "--", "cat", STATE_FILE
    )
    assert {state.stdout.strip()} == tags(app_before)
    side_text = logs(operator, namespace, "worker", "sidecar")
    assert counts(side_text)[0] == 1
    assert not tags(side_text) & tags(side_before)
    # checkpoint-diagnosis: the restored generation keeps its images and CRIU logs
    store = _store(operator, namespace)
    assert list(store.rglob("*.img")), f"no images kept in {store}"
    assert list(store.rglob("*.log")), f"no CRIU logs kept in {store}"

    # a restore that cannot succeed: every image of every generation corrupted on purpose
    counted(operator, namespace, "worker", counts(app)[0] + 5)
    operator.kubectl("delete", "pod", "-n", namespace, "worker", "--wait=true", timeout=180)
    images = list(store.rglob("*.img"))
    assert images
    for image in images:
        image.write_bytes(b"\xde\xad\xbe\xef" * 64)
    apply(operator, namespace, _pod(app_image))
    _running_again(operator, namespace)
    fresh = counted(operator, namespace, "worker", 5)
    assert fresh >= 5
    assert counts(logs(operator, namespace, "worker"))[0] == 1, "expected a fresh start"
    warnings = wait_for(
        "a Warning event saying why",
        lambda: [
            e
            for e in events(operator, namespace, "StartedFresh")
            + events(operator, namespace, "RestoreFailed")
            if e["type"] == "Warning"
        ],
        60,
    )
    assert any("restore" in e["message"] for e in warnings), warnings
    pod = get(operator, namespace, "pod", "worker")
    assert all(s["restartCount"] == 0 for s in pod["status"]["containerStatuses"]), "crash loop"


def test_labelling_a_pod_without_the_agent_warns(
    operator: Cluster, namespace: str, app_image: str
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain"},
        "spec": {"containers": [container(app_image)]},
    }
    apply(operator, namespace, pod)
    operator.kubectl("label", "pod", "-n", namespace, "plain", f"{P}checkpoint-mode=true")
    found = wait_for("NotInjected", lambda: events(operator, namespace, "NotInjected"), 60)
    assert found[0]["type"] == "Warning"
    assert "template" in found[0]["message"]
