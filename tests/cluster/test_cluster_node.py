"""Smoke tests of the node tier: pods really run on a real kubelet with containerd.

Covers what later tests stand on: a PVC written by a pod, a Deployment rolled out and
garbage-collected, `kubectl logs`, the capabilities checkpointed containers need, and images
served by the local registry.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from podckpt.devtools.cluster import components
from podckpt.devtools.cluster.cluster import Cluster

pytestmark = [pytest.mark.node]


@pytest.fixture
def namespace(node_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    name = "node-" + request.node.name.replace("_", "-")[5:40].strip("-").lower()
    yield node_cluster.create_namespace(name)
    node_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def pod_phase(c: Cluster, namespace: str, name: str) -> str:
    """The pod's phase, "" if it does not exist (yet)."""
    return c.kubectl(
        "get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.phase}", check=False
    ).stdout


def test_pod_runs_and_kubectl_logs_work(
    node_cluster: Cluster, busybox_image: str, namespace: str
) -> None:
    node_cluster.kubectl(
        "run", "hello", "-n", namespace, f"--image={busybox_image}",
        "--image-pull-policy=Never", "--restart=Never", "--",
        "sh", "-c", "echo hello from podckpt; sleep 3600",
    )  # fmt: skip
    components.wait_until(
        "pod Running", lambda: pod_phase(node_cluster, namespace, "hello") == "Running", 60
    )
    components.wait_until(
        "kubectl logs",
        lambda: (
            "hello from podckpt" in node_cluster.kubectl("logs", "-n", namespace, "hello").stdout
        ),
        20,
    )
    out = node_cluster.kubectl("exec", "-n", namespace, "hello", "--", "echo", "exec ok").stdout
    assert out.strip() == "exec ok"


def test_pvc_of_default_class_is_written_by_a_pod(
    node_cluster: Cluster, busybox_image: str, namespace: str
) -> None:
    node_cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=f"""
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 16Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: writer}}
spec:
  restartPolicy: Never
  containers:
  - name: w
    image: {busybox_image}
    imagePullPolicy: Never
    command: [sh, -c, "echo written-by-pod > /data/proof && cat /data/proof"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: data}}
""",
    )
    components.wait_until(
        "writer Succeeded",
        lambda: pod_phase(node_cluster, namespace, "writer") == "Succeeded",
        90,
    )
    pv = node_cluster.kubectl(
        "get", "pvc", "data", "-n", namespace, "-o", "jsonpath={.spec.volumeName}"
    ).stdout
    host_path = node_cluster.kubectl("get", "pv", pv, "-o", "jsonpath={.spec.hostPath.path}").stdout
    assert (Path(host_path) / "proof").read_text() == "written-by-pod\n"


def test_deployment_rolls_out_and_is_deleted_with_cascade(
    node_cluster: Cluster, busybox_image: str, namespace: str
) -> None:
    node_cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, labels: {{app: web}}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {{name: web, image: {busybox_image}, imagePullPolicy: Never, command: [sleep, "3600"]}}
""",
    )
    node_cluster.kubectl(
        "rollout", "status", "deployment/web", "-n", namespace, "--timeout=90s", timeout=100
    )
    pods = node_cluster.kubectl("get", "pods", "-n", namespace, "-l", "app=web", "-o", "name")
    assert len(pods.stdout.split()) == 2
    node_cluster.kubectl("delete", "deployment", "web", "-n", namespace, "--cascade=foreground")

    def all_gone() -> bool:
        left = node_cluster.kubectl(
            "get", "replicasets,pods", "-n", namespace, "-l", "app=web", "-o", "name"
        ).stdout
        return left.strip() == ""

    components.wait_until("ReplicaSet and pods garbage-collected", all_gone, 90)


def test_checkpoint_capabilities_and_unconfined_seccomp_are_allowed(
    node_cluster: Cluster, busybox_image: str, namespace: str
) -> None:
    caps = ["CHECKPOINT_RESTORE", "SETPCAP", "NET_ADMIN", "SYS_PTRACE", "SYS_ADMIN"]
    node_cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "caps"},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "c",
                            "image": busybox_image,
                            "imagePullPolicy": "Never",
                            "command": ["sh", "-c", "grep CapEff /proc/self/status"],
                            "securityContext": {
                                "capabilities": {"add": caps},
                                "seccompProfile": {"type": "Unconfined"},
                            },
                        }
                    ],
                },
            }
        ),
    )
    components.wait_until(
        "caps pod Succeeded", lambda: pod_phase(node_cluster, namespace, "caps") == "Succeeded", 60
    )
    cap_eff = int(node_cluster.kubectl("logs", "-n", namespace, "caps").stdout.split()[1], 16)
    bits = {"CHECKPOINT_RESTORE": 40, "SETPCAP": 8, "NET_ADMIN": 12, "SYS_PTRACE": 19}
    bits["SYS_ADMIN"] = 21
    missing = [c for c, bit in bits.items() if not cap_eff & (1 << bit)]
    assert not missing, f"capabilities not granted: {missing} (CapEff {cap_eff:x})"


def test_image_pushed_to_local_registry_is_pulled_by_the_node(
    node_cluster: Cluster, namespace: str, busybox_rootfs: Path, busybox_image: str
) -> None:
    ref = node_cluster.push_image(busybox_rootfs, "podckpt.local/pushed:1", cmd=["sh"])
    assert ref == f"{node_cluster.registry}/pushed:1"
    with urllib.request.urlopen(f"http://{node_cluster.registry}/v2/pushed/tags/list") as r:
        assert json.load(r)["tags"] == ["1"]
    # Images loaded into the node are in the registry as well, the pause image included.
    for loaded in (busybox_image, "podckpt.local/pause:3.10"):
        repo, tag = node_cluster.registry_ref(loaded).split("/", 1)[1].rsplit(":", 1)
        with urllib.request.urlopen(f"http://{node_cluster.registry}/v2/{repo}/tags/list") as r:
            assert tag in json.load(r)["tags"]
    node_cluster.kubectl(
        "run", "pulled", "-n", namespace, f"--image={ref}", "--image-pull-policy=Always",
        "--restart=Never", "--", "echo", "pulled from the local registry",
    )  # fmt: skip
    components.wait_until(
        "pulled pod Succeeded",
        lambda: pod_phase(node_cluster, namespace, "pulled") == "Succeeded",
        60,
    )
    assert (
        "pulled from the local registry"
        in node_cluster.kubectl("logs", "-n", namespace, "pulled").stdout
    )
