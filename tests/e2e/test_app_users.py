"""The application runs as the user it would have run as without podckpt, on a real node:
an image whose USER is a name (uid 1001 in its own /etc/passwd) and no runAsUser, and a
container with runAsNonRoot and runAsUser, both across a checkpoint and a restore; an image
that runs as root under runAsNonRoot never runs at all, as without podckpt. The control
socket serves `kubectl exec` (root in the container)."""

from __future__ import annotations

import re
import shutil
from typing import Any

import pytest
from e2ehelpers import P, apply, container, counted, counts, get, logs, phase_lines, tags, wait_for

from podckpt.devtools.bundlecheck.roots import busybox_root
from podckpt.devtools.cluster.cluster import Cluster

pytestmark = [pytest.mark.node, pytest.mark.slow]

USER_IMAGE = "podckpt.local/e2e-user:1"


@pytest.fixture(scope="module")
def user_image(node_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox whose image config says `USER app`, uid 1001 in the image's /etc/passwd."""
    root = tmp_path_factory.mktemp("user-image") / "rootfs"
    shutil.copytree(busybox_root(), root, symlinks=True)
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    with (etc / "passwd").open("a") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\napp:x:1001:1001:app:/home/app:/bin/sh\n")
    with (etc / "group").open("a") as f:
        f.write("root:x:0:\napp:x:1001:\n")
    return node_cluster.load_image(root, USER_IMAGE, push=False, user="app")


def _statefulset(image: str) -> dict[str, Any]:
    strict = container(image, name="strict")
    strict["securityContext"] = {"runAsNonRoot": True, "runAsUser": 1002}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "secure"},
        "spec": {
            "replicas": 1,
            "serviceName": "secure",
            "selector": {"matchLabels": {"app": "secure"}},
            "template": {
                "metadata": {"labels": {"app": "secure", f"{P}checkpoint-mode": "true"}},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container(image), strict],
                },
            },
        },
    }


def _uids(cluster: Cluster, namespace: str, pod: str, c: str, phase: str) -> list[str]:
    """Uid line (real, effective, saved, fs) of the application the agent started/restored."""
    lines = [r for r in phase_lines(logs(cluster, namespace, pod, c)) if r["phase"] == phase]
    assert lines, logs(cluster, namespace, pod, c)[-2000:]
    pid = lines[-1]["pid"]
    status = cluster.kubectl(
        "exec", "-n", namespace, pod, "-c", c, "--", "cat", f"/proc/{pid}/status"
    ).stdout
    match = re.search(r"^Uid:\s+(.*)$", status, re.MULTILINE)
    assert match, status
    return match[1].split()


def _running(cluster: Cluster, namespace: str, uid: str | None = None) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        pod = get(cluster, namespace, "pod", "secure-0")
        if not pod or pod["metadata"]["uid"] == uid or pod["metadata"].get("deletionTimestamp"):
            return None
        statuses = pod.get("status", {}).get("containerStatuses", [])
        ok = len(statuses) == 2 and all("running" in s["state"] for s in statuses)
        return pod if ok else None

    return wait_for("secure-0 running", check, 180)


def test_application_users_across_checkpoint_and_restore(
    operator: Cluster, namespace: str, user_image: str
) -> None:
    apply(operator, namespace, _statefulset(user_image))
    first = _running(operator, namespace)
    counted(operator, namespace, "secure-0", 5)
    counted(operator, namespace, "secure-0", 5, "strict")
    assert _uids(operator, namespace, "secure-0", "app", "fresh-start") == ["1001"] * 4
    assert _uids(operator, namespace, "secure-0", "strict", "fresh-start") == ["1002"] * 4
    # kubectl exec runs as root in the container: the agent's control socket answers it.
    done = operator.kubectl(
        "exec", "-n", namespace, "secure-0", "-c", "app", "--",
        "/.podckpt/bin/podckpt-agent", "checkpoint",
    )  # fmt: skip
    assert re.search(r"checkpoint \S+ committed", done.stdout), done.stdout + done.stderr
    before = logs(operator, namespace, "secure-0")

    operator.kubectl("delete", "pod", "-n", namespace, "secure-0", "--wait=false")
    _running(operator, namespace, first["metadata"]["uid"])
    counted(operator, namespace, "secure-0", counts(before)[-1] + 2)
    after = logs(operator, namespace, "secure-0")
    assert tags(after) == tags(before), "the same process tree, restored"
    assert _uids(operator, namespace, "secure-0", "app", "restore") == ["1001"] * 4
    assert _uids(operator, namespace, "secure-0", "strict", "restore") == ["1002"] * 4


def test_run_as_non_root_with_a_root_image_never_runs(
    operator: Cluster, namespace: str, app_image: str
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "rootimage",
            "labels": {f"{P}checkpoint-mode": "true"},
            "annotations": {f"{P}checkpoint-storage-volume": "ckpt"},
        },
        "spec": {
            "securityContext": {"runAsNonRoot": True},
            "containers": [container(app_image)],
            "volumes": [{"name": "ckpt", "emptyDir": {}}],
        },
    }
    apply(operator, namespace, pod)

    def refused() -> dict[str, Any] | None:
        found = get(operator, namespace, "pod", "rootimage") or {}
        for status in found.get("status", {}).get("initContainerStatuses", []):
            waiting = status.get("state", {}).get("waiting") or {}
            if status["name"] == "podckpt-user-0" and waiting.get("reason") == (
                "CreateContainerConfigError"
            ):
                return found
        return None

    found = wait_for("the kubelet refusing the root image", refused, 120)
    message = next(
        s["state"]["waiting"].get("message", "")
        for s in found["status"]["initContainerStatuses"]
        if s["name"] == "podckpt-user-0"
    )
    assert "runAsNonRoot" in message
    assert not any(
        "running" in s.get("state", {}) for s in found["status"].get("containerStatuses", [])
    )
    assert logs(operator, namespace, "rootimage") == ""
