"""The bundle in a real pod: init container from the umoci image, agent in a scratch image.

Kubelet + containerd + runc, not the sandbox: the pod spec is what the webhook is to generate
(docs/bundle.md) - emptyDir filled by the init container, mounted read-only at /.podckpt,
capabilities dropped to exactly the measured set, seccomp Unconfined. The application image is
the static root: one static binary, no libc, no shell. Deleting the pod checkpoints it (SIGTERM);
the same pod created again restores it and the counter goes on.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podckpt.bundle import MOUNT_PATH
from podckpt.bundle.image import INSTALL_TARGET, build_image
from podckpt.devtools.bundlecheck.roots import COUNTER, static_root
from podckpt.devtools.cluster import components
from podckpt.devtools.cluster.cluster import Cluster

pytestmark = [pytest.mark.node, pytest.mark.bundle, pytest.mark.slow]

CAPABILITIES = ["CHECKPOINT_RESTORE", "SETPCAP"]
AGENT_COMMAND = [f"{MOUNT_PATH}/bin/podckpt-agent", "run", "--store", "/store/app"]
AGENT_COMMAND += ["--container", "app", "--"]


@pytest.fixture
def namespace(node_cluster: Cluster) -> Iterator[str]:
    name = "bundle-pod"
    node_cluster.kubectl("create", "namespace", name)
    yield name
    node_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _pod(bundle_ref: str, app_ref: str, store: Path) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "counter"},
        "spec": {
            "terminationGracePeriodSeconds": 60,
            "restartPolicy": "Never",
            "volumes": [
                {"name": "podckpt-bundle", "emptyDir": {}},
                {"name": "store", "hostPath": {"path": str(store), "type": "Directory"}},
            ],
            "initContainers": [
                {
                    "name": "podckpt-bundle",
                    "image": bundle_ref,
                    "imagePullPolicy": "Never",
                    "volumeMounts": [{"name": "podckpt-bundle", "mountPath": INSTALL_TARGET}],
                    "securityContext": {"capabilities": {"drop": ["ALL"]}},
                }
            ],
            "containers": [
                {
                    "name": "app",
                    "image": app_ref,
                    "imagePullPolicy": "Never",
                    "command": AGENT_COMMAND,
                    "args": [COUNTER, "/store/count"],
                    "volumeMounts": [
                        {"name": "podckpt-bundle", "mountPath": MOUNT_PATH, "readOnly": True},
                        {"name": "store", "mountPath": "/store"},
                    ],
                    "securityContext": {
                        "seccompProfile": {"type": "Unconfined"},
                        "capabilities": {"drop": ["ALL"], "add": CAPABILITIES},
                    },
                }
            ],
        },
    }


def _count(path: Path) -> int:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return 0


def test_pod_checkpoints_and_restores_through_the_bundle(
    node_cluster: Cluster, bundle: Path, namespace: str, tmp_path: Path
) -> None:
    layout = tmp_path / "oci"
    bundle_ref = build_image(bundle, layout)
    node_cluster.load_image(layout, bundle_ref)
    app_ref = node_cluster.load_image(static_root(), "podckpt.local/counter-static:bundle-test")
    store = tmp_path / "store"
    (store / "app").mkdir(parents=True)
    count = store / "count"
    spec = json.dumps(_pod(bundle_ref, app_ref, store))

    def apply() -> None:
        node_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=spec)

    def logs() -> str:
        return node_cluster.kubectl("logs", "-n", namespace, "counter", check=False).stdout

    apply()
    components.wait_until("counter counts", lambda: _count(count) > 3, 120)
    components.wait_until("fresh start logged", lambda: '"phase":"fresh-start"' in logs(), 30)
    node_cluster.kubectl("delete", "pod", "-n", namespace, "counter", "--wait=true")
    at_dump = _count(count)
    time.sleep(0.5)
    assert _count(count) == at_dump, "the application outlived its pod"
    assert (store / "app").is_dir()
    assert any((store / "app").rglob("LATEST")), "no committed checkpoint in the store"

    apply()
    components.wait_until("restored counter goes on", lambda: _count(count) > at_dump + 3, 120)
    assert '"phase":"restore","outcome":"ok"' in logs()
    node_cluster.kubectl("delete", "pod", "-n", namespace, "counter", "--wait=true")
    shutil.rmtree(store, ignore_errors=True)
