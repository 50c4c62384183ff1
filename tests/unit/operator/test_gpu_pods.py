"""GPU pods at admission: admitted like any other, with the GPU memory (which a checkpoint
copies into the container's host memory) counted in the grace period and the volume size, and
a warning when the memory limit cannot hold it."""

from __future__ import annotations

from typing import Any

import pytest

from podckpt.api import InvalidValueError, parse_settings
from podckpt.operator.controller.volumes import claim_size
from podckpt.operator.domain import gpu, sizing
from podckpt.operator.settings import OperatorSettings
from podckpt.operator.webhook.decide import Namespace, Plan, plan
from podckpt.operator.webhook.inject import build

ON = {"memverge.ai/checkpoint-mode": "true"}
NS = Namespace("ns")

GI = 2**30
MI = 2**20


def gpu_container(gpus: int = 1, memory: str | None = "200Gi") -> dict[str, Any]:
    resources: dict[str, Any] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    if memory:
        resources["limits"]["memory"] = memory
    return {"name": "train", "image": "reg/train:1", "command": ["/train"], "resources": resources}


def gpu_pod(make_pod: Any, *, product: str | None = "NVIDIA-H200", **kw: Any) -> dict[str, Any]:
    pod: dict[str, Any] = make_pod(
        name="db-0", owner="statefulset", labels=ON, containers=[gpu_container(**kw)]
    )
    if product:
        pod["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": product}
    return pod


@pytest.mark.parametrize(
    ("product", "gib"),
    [
        ("NVIDIA-H200", 141),
        ("NVIDIA-H100-80GB-HBM3", 80),
        ("NVIDIA-H100-NVL", 94),
        ("NVIDIA-A100-SXM4-40GB", 40),
        ("NVIDIA-A100-SXM4-80GB", 80),
        ("NVIDIA-L40S", 48),
        ("NVIDIA-L4", 24),
        ("Tesla-T4", 16),
        ("NVIDIA-A10G", 24),
        ("Tesla-V100-SXM2-32GB", 32),
        ("NVIDIA-FUTURE-X1-200GB", 200),
    ],
)
def test_memory_per_model(product: str, gib: int) -> None:
    assert gpu.model_memory(product) == gib * GI


def test_unknown_model_has_no_size() -> None:
    assert gpu.model_memory("NVIDIA-Something") is None


def test_memory_per_gpu_key_then_model_then_assumed() -> None:
    spec = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "nvidia.com/gpu.product",
                                    "operator": "In",
                                    "values": ["NVIDIA-L4", "NVIDIA-A100-SXM4-80GB"],
                                }
                            ]
                        }
                    ]
                }
            }
        }
    }
    assert gpu.memory_per_gpu(spec, 12 * GI, 80 * GI).bytes == 12 * GI
    from_model = gpu.memory_per_gpu(spec, None, 7 * GI)
    assert from_model.bytes == 80 * GI  # the larger of the two the pod may get
    assert "NVIDIA-A100-SXM4-80GB or NVIDIA-L4" in from_model.source
    assumed = gpu.memory_per_gpu({}, None, 7 * GI)
    assert (assumed.bytes, assumed.known) == (7 * GI, False)


def test_gpu_memory_key_is_a_quantity() -> None:
    assert parse_settings({}, {"memverge.ai/gpu-memory": "24Gi"}).gpu_memory == 24 * GI
    with pytest.raises(InvalidValueError, match=r"memverge\.ai/gpu-memory"):
        parse_settings({}, {"memverge.ai/gpu-memory": "lots"})


def test_gpu_pod_is_admitted_with_gpu_memory_in_its_grace_period(
    make_pod: Any, op: OperatorSettings
) -> None:
    pod = gpu_pod(make_pod, gpus=2, memory="400Gi")
    planned = plan(pod, NS, op)
    assert isinstance(planned, Plan)
    assert planned.gpu_memory == 141 * GI
    assert not [w for w in planned.warnings if "GPU" in w]
    new = build(pod, planned, {}, op)
    # 400 GiB dumped at 200 MiB/s (2048 s) + 282 GiB copied off the GPUs at 1 GiB/s + 30 s
    assert new["spec"]["terminationGracePeriodSeconds"] == 30 + 2048 + 282
    assert new["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_memory_limit_too_small_for_the_gpu_memory_is_a_warning(
    make_pod: Any, op: OperatorSettings
) -> None:
    planned = plan(gpu_pod(make_pod, memory="64Gi"), NS, op)
    assert isinstance(planned, Plan)
    (warning,) = [w for w in planned.warnings if "GPU" in w]
    assert "container train: its memory limit 65536Mi cannot hold the memory of its 1 GPU(s)" in (
        warning
    )
    assert "the GPU model NVIDIA-H200" in warning


def test_unknown_model_is_assumed_and_said(make_pod: Any, op: OperatorSettings) -> None:
    planned = plan(gpu_pod(make_pod, product=None, memory=None), NS, op)
    assert isinstance(planned, Plan)
    assert planned.gpu_memory == op.assumed_gpu_memory_bytes
    text = " | ".join(planned.warnings)
    assert "GPU model is unknown" in text
    assert "memverge.ai/gpu-memory" in text
    assert "plus their GPUs' memory" in text


def test_pod_without_gpus_is_unchanged_by_all_this(make_pod: Any, op: OperatorSettings) -> None:
    pod = make_pod(name="db-0", owner="statefulset", labels=ON)
    planned = plan(pod, NS, op)
    assert isinstance(planned, Plan)
    assert planned.gpu_memory == 0
    assert not [w for w in planned.warnings if "GPU" in w]


def test_volume_of_a_gpu_pod(op: OperatorSettings) -> None:
    spec = {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}}
    settings = parse_settings({}, {})
    # A memory limit bounds the image, GPU memory included (it is copied into that memory).
    limited = claim_size(settings, [gpu_container(memory="32Gi")], op, pod_spec=spec)
    expected = 3 * (32 * GI * 1.1 + 256 * MI)
    assert expected <= limited.bytes < expected + MI
    # Without a limit: the assumed memory plus the GPU's, never less than the default.
    unlimited = claim_size(settings, [gpu_container(memory=None)], op, pod_spec=spec)
    expected = 3 * ((2 + 24) * GI * 1.1 + 256 * MI)
    assert expected <= unlimited.bytes < expected + MI
    assert "24576Mi of GPU memory" in unlimited.reason


def test_sizing_counts_gpus_of_unlimited_containers_only_once() -> None:
    memory = sizing.checkpointed_memory(
        [gpu_container(gpus=2, memory=None), gpu_container(gpus=1, memory="100Gi")],
        2 * GI,
        gpu_memory=10 * GI,
    )
    assert memory.gpu == 30 * GI
    assert memory.total == (2 + 20) * GI + 100 * GI
    grace = sizing.grace_period_seconds(
        0, bytes_per_second=1, base_seconds=30, gpu_bytes=memory.gpu, gpu_bytes_per_second=GI
    )
    assert grace == 60
