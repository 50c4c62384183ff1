"""GPU pods through the real API server and the installed webhook: admitted like any other pod,
the grace period counting the GPUs' memory, and kubectl showing the warning about a memory
limit that cannot hold it. (No GPU node here: admission is all this tests.)"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubehelpers import Kube

pytestmark = pytest.mark.apiserver

ON = {"memverge.ai/checkpoint-mode": "true"}


def gpu_pod(name: str, memory: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": ON,
            "annotations": {"memverge.ai/checkpoint-storage-volume": "ckpt"},
        },
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"},
            "containers": [
                {
                    "name": "train",
                    "image": "example.invalid/train:1",
                    "command": ["/train"],
                    "resources": {"limits": {"memory": memory, "nvidia.com/gpu": "2"}},
                }
            ],
            "volumes": [{"name": "ckpt", "emptyDir": {}}],
        },
    }


def test_gpu_pod_is_admitted_and_sized_for_its_gpu_memory(
    apiserver_cluster: Any, kube: Kube, namespace: str
) -> None:
    proc = apiserver_cluster.kubectl(
        "create", "-n", namespace, "-f", "-", input=yaml.safe_dump(gpu_pod("small", "16Gi"))
    )
    assert "container train: its memory limit" in proc.stderr
    assert "cannot hold the memory of its 2 GPU(s) (2x 24576Mi, the GPU model NVIDIA-L4)" in (
        proc.stderr
    )
    created = kube.plain(kube.core.read_namespaced_pod("small", namespace))
    spec = created["spec"]
    assert created["metadata"]["annotations"]["podckpt.io/injected"] == "v1"
    train = spec["containers"][0]
    assert train["command"][0] == "/.podckpt/bin/podckpt-agent"
    assert train["resources"]["limits"]["nvidia.com/gpu"] == "2"
    # 30 s + 16 GiB at 200 MiB/s + 2 x 24 GiB off the GPUs at 1 GiB/s
    assert spec["terminationGracePeriodSeconds"] == 30 + 82 + 48

    roomy = kube.create_pod(namespace, gpu_pod("roomy", "64Gi"))
    assert roomy["spec"]["terminationGracePeriodSeconds"] == 30 + 328 + 48
