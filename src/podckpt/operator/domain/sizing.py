"""How big a checkpoint volume must be, and how long a pod may take to die.

Both derive from the memory the checkpointed containers may touch: a CRIU image is the size of
the touched memory (CRIU notes), and dumping it takes that size over the disk's throughput.

GPU memory (domain/gpu.py) passes through host memory: the driver's checkpoint copies it into
the process before CRIU dumps it. With a memory limit the image still cannot exceed the limit
(the copy is charged to the container; the webhook warns when the limit cannot hold the GPU
memory); without one, the container's assumed host memory plus its GPUs' memory is dumped. The
grace period adds the copy off the GPUs at their own throughput.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from podckpt.api import InvalidValueError, parse_quantity

from .gpu import gpu_count

MIB = 2**20


def memory_limit(container: Mapping[str, Any]) -> int | None:
    """Bytes of the container's memory limit, or None when it has none (or an odd one)."""
    value = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    if value is None:
        return None
    try:
        return parse_quantity("resources.limits.memory", str(value))
    except InvalidValueError:
        return None


@dataclasses.dataclass(frozen=True)
class Memory:
    """Memory of the checkpointed containers: the sum of their limits, assumed where absent."""

    total: int
    unlimited: tuple[str, ...]
    count: int
    #: Bytes of the GPUs of the checkpointed containers (copied to host memory at a dump).
    gpu: int = 0

    @property
    def all_unlimited(self) -> bool:
        return len(self.unlimited) == self.count


def checkpointed_memory(
    containers: Iterable[Mapping[str, Any]], assumed: int, *, gpu_memory: int = 0
) -> Memory:
    """`gpu_memory`: bytes of one GPU of the pod (domain/gpu.py), 0 for a pod without GPUs."""
    total = 0
    count = 0
    gpu_total = 0
    unlimited: list[str] = []
    for container in containers:
        count += 1
        gpu = gpu_count(container) * gpu_memory
        gpu_total += gpu
        limit = memory_limit(container)
        if limit is None:
            unlimited.append(container["name"])
            limit = assumed + gpu
        total += limit
    return Memory(total, tuple(unlimited), count, gpu_total)


def volume_size(
    memory: Memory,
    *,
    keep: int,
    headroom_fraction: float,
    headroom_bytes: int,
    default_bytes: int,
) -> int:
    """Bytes of a dynamic checkpoint PVC, rounded up to MiB.

    One generation is the memory plus headroom (fraction + fixed amount for page alignment,
    CRIU metadata and logs, checkpoint-files). The volume holds `keep` committed generations
    plus the one being written, because the oldest is pruned only after the new one commits.
    Without any memory limit the size cannot be derived and `default_bytes` is used, or more
    when the containers' GPU memory (which is dumped in any case) needs more.
    """
    if memory.count == 0 or (memory.all_unlimited and not memory.gpu):
        return _round_mib(default_bytes)
    generation = memory.total * (1 + headroom_fraction) + headroom_bytes
    size = _round_mib(math.ceil(generation * (keep + 1)))
    return max(size, _round_mib(default_bytes)) if memory.all_unlimited else size


#: Annotation (under the operator's domain) on a checkpoint PVC: the dump throughput, in bytes
#: per second, the agent measured on its last committed checkpoint there (bytes / seconds from
#: the dump's start to its manifest: CRIU, hashing, fsync). The controller writes it from the
#: agent's `commit` line; the webhook computes the next pods' grace period from it.
MEASURED_THROUGHPUT = "dump-bytes-per-second"


def grace_period_seconds(
    memory_bytes: int,
    *,
    bytes_per_second: int,
    base_seconds: int,
    gpu_bytes: int = 0,
    gpu_bytes_per_second: int = 1,
) -> int:
    """Seconds to dump `memory_bytes`: a fixed part plus the dump at the assumed throughput,
    plus the copy of `gpu_bytes` off the GPUs first."""
    return (
        base_seconds
        + math.ceil(memory_bytes / bytes_per_second)
        + math.ceil(gpu_bytes / gpu_bytes_per_second)
    )


def format_bytes(size: int) -> str:
    """A Kubernetes quantity for a PVC request (`Mi` granularity)."""
    return f"{_round_mib(size) // MIB}Mi"


def _round_mib(size: int) -> int:
    return max(1, math.ceil(size / MIB)) * MIB


@dataclasses.dataclass(frozen=True)
class Raise:
    """A limit the webhook raises by podckpt's own footprint: `container` None is the pod-level
    `spec.resources`."""

    resource: str
    container: str | None
    by_bytes: int
    why: str

    def describe(self) -> str:
        where = f"container {self.container}" if self.container else "the pod"
        return (
            f"raised limits.{self.resource} of {where} by {format_bytes(self.by_bytes)}"
            f" for {self.why}"
        )


def _limit(resources: Mapping[str, Any] | None, resource: str) -> int | None:
    value = ((resources or {}).get("limits") or {}).get(resource)
    if value is None:
        return None
    try:
        return parse_quantity(f"resources.limits.{resource}", str(value))
    except InvalidValueError:
        return None


def footprint_raises(
    spec: Mapping[str, Any], checkpointed: Iterable[str], *, bundle_bytes: int, agent_bytes: int
) -> list[Raise]:
    """The limits to raise so that what podckpt adds never counts against the application.

    - The bundle's emptyDir counts against the pod's ephemeral storage, whose limit is the
      pod-level one or else the sum of the containers' limits: one of them is raised by the
      emptyDir's `sizeLimit` (a checkpointed container's if it has one).
    - The agent and CRIU run in each checkpointed container's memory cgroup: its memory
      limit (and the pod-level one) is raised by their footprint.
    Without a limit nothing is raised: nothing can be exceeded.
    """
    names = list(checkpointed)
    containers = [c for c in spec.get("containers") or () if c.get("name")]
    raises: list[Raise] = []
    bundle = "the agent bundle (emptyDir podckpt-bundle)"
    if _limit(spec.get("resources"), "ephemeral-storage") is not None:
        raises.append(Raise("ephemeral-storage", None, bundle_bytes, bundle))
    else:
        limited = [c["name"] for c in containers if _limit(c.get("resources"), "ephemeral-storage")]
        preferred = [n for n in limited if n in names] or limited
        if preferred:
            raises.append(Raise("ephemeral-storage", preferred[0], bundle_bytes, bundle))
    agent = "the checkpoint agent and CRIU"
    for container in containers:
        if container["name"] in names and _limit(container.get("resources"), "memory"):
            raises.append(Raise("memory", container["name"], agent_bytes, agent))
    if _limit(spec.get("resources"), "memory") is not None and names:
        raises.append(Raise("memory", None, agent_bytes * len(names), agent))
    return raises


def apply_raise(spec: dict[str, Any], item: Raise) -> None:
    """Raise the limit (and an explicit request, which keeps the pod's QoS class)."""
    if item.container is None:
        resources = spec.setdefault("resources", {})
    else:
        container = next(c for c in spec["containers"] if c.get("name") == item.container)
        resources = container.setdefault("resources", {})
    for kind in ("limits", "requests"):
        values = resources.get(kind) or {}
        current = _limit({"limits": values}, item.resource)
        if current is None:
            continue
        total = current + item.by_bytes
        values[item.resource] = f"{total // MIB}Mi" if total % MIB == 0 else str(total)
        resources[kind] = values
