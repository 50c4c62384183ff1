"""GPU memory of a pod, for the grace period and the volume size (pure).

A checkpoint of a CUDA process moves the GPU's memory into the process's host memory (the
driver's checkpoint), so it counts against the container's memory limit, lands in the CRIU
image, and takes time to copy. The webhook does not know which GPU a pod will get; it takes,
per GPU: the pod's `gpu-memory` key, else the model the pod selects with the
`nvidia.com/gpu.product` node label (NVIDIA GPU feature discovery; node selector or required
node affinity) looked up in `MODEL_MEMORY`, else the operator's `assumed_gpu_memory_bytes`.
The number of GPUs is the container's `nvidia.com/gpu` limit (extended resources are limits).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

GIB = 2**30
RESOURCE = "nvidia.com/gpu"
PRODUCT_LABEL = "nvidia.com/gpu.product"

#: Memory of one GPU by model, as GPU feature discovery names the product
#: (`NVIDIA-H100-80GB-HBM3`, `Tesla-T4`): the first entry whose words all appear among the
#: product's words (split at `-`, `_`, spaces) wins, so the more specific come first. Rounded
#: up to whole GiB (what `nvidia-smi` calls memory.total). A product naming its size in GB
#: (`...-40GB`) that no entry matches is taken at that size.
MODEL_MEMORY: tuple[tuple[tuple[str, ...], int], ...] = (
    (("GB200",), 186 * GIB),
    (("B200",), 180 * GIB),
    (("GH200",), 96 * GIB),
    (("H200",), 141 * GIB),
    (("H100", "NVL"), 94 * GIB),
    (("H100",), 80 * GIB),
    (("H800",), 80 * GIB),
    (("H20",), 96 * GIB),
    (("A100", "40GB"), 40 * GIB),
    (("A100",), 80 * GIB),
    (("A800", "40GB"), 40 * GIB),
    (("A800",), 80 * GIB),
    (("L40S",), 48 * GIB),
    (("L40",), 48 * GIB),
    (("L20",), 48 * GIB),
    (("L4",), 24 * GIB),
    (("A40",), 48 * GIB),
    (("A30",), 24 * GIB),
    (("A16",), 16 * GIB),
    (("A10G",), 24 * GIB),
    (("A10",), 24 * GIB),
    (("A2",), 16 * GIB),
    (("T4",), 16 * GIB),
    (("V100", "32GB"), 32 * GIB),
    (("V100",), 16 * GIB),
    (("RTX", "6000", "Ada"), 48 * GIB),
    (("A6000",), 48 * GIB),
    (("4090",), 24 * GIB),
)
_WORDS = re.compile(r"[-_ ]+")
_SIZE = re.compile(r"^(\d+)GB$")


@dataclasses.dataclass(frozen=True)
class GpuMemory:
    """Bytes of one GPU and where that figure comes from (said in warnings and logs)."""

    bytes: int
    source: str
    #: False when neither the key nor a known model gave the figure.
    known: bool = True


def gpu_count(container: Mapping[str, Any]) -> int:
    """GPUs of a container: its `nvidia.com/gpu` limit (requests must equal it), 0 if none."""
    resources = container.get("resources") or {}
    for kind in ("limits", "requests"):
        value = (resources.get(kind) or {}).get(RESOURCE)
        if value is not None:
            try:
                return max(0, int(str(value)))
            except ValueError:
                return 0
    return 0


def model_memory(product: str) -> int | None:
    """Bytes of one GPU of `product` (a `nvidia.com/gpu.product` value), None if unknown."""
    words = {w.upper() for w in _WORDS.split(product) if w}
    for needed, size in MODEL_MEMORY:
        if {w.upper() for w in needed} <= words:
            return size
    sizes = [int(m[1]) for w in words if (m := _SIZE.match(w))]
    return max(sizes) * GIB if sizes else None


def products(spec: Mapping[str, Any]) -> list[str]:
    """The GPU products a pod can be scheduled on, from its node selector and its required node
    affinity (`In` expressions on `nvidia.com/gpu.product`)."""
    found = []
    selected = (spec.get("nodeSelector") or {}).get(PRODUCT_LABEL)
    if selected:
        found.append(str(selected))
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or ():
        for expression in (term or {}).get("matchExpressions") or ():
            if expression.get("key") == PRODUCT_LABEL and expression.get("operator") == "In":
                found.extend(str(v) for v in expression.get("values") or ())
    return found


def memory_per_gpu(spec: Mapping[str, Any], hint: int | None, assumed: int) -> GpuMemory:
    """`gpu-memory` if given; else the largest of the selectable models, when all are known;
    else `assumed`."""
    if hint is not None:
        return GpuMemory(hint, "the gpu-memory key")
    candidates = products(spec)
    sizes = [model_memory(p) for p in candidates]
    if candidates and all(s is not None for s in sizes):
        size = max(s for s in sizes if s is not None)
        return GpuMemory(size, "the GPU model " + " or ".join(sorted(set(candidates))))
    return GpuMemory(assumed, "assumed (GPU model unknown)", known=False)


def pod_gpu_memory(
    spec: Mapping[str, Any], containers: Iterable[Mapping[str, Any]], hint: int | None, assumed: int
) -> GpuMemory | None:
    """Memory of one GPU for a pod whose `containers` use GPUs; None when none does."""
    if not any(gpu_count(c) for c in containers):
        return None
    return memory_per_gpu(spec, hint, assumed)
