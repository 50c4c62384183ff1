"""How big a checkpoint volume must be, and how long a pod may take to die.

Both derive from the memory the checkpointed containers may touch: a CRIU image is the size of
the touched memory (CRIU notes), and dumping it takes that size over the disk's throughput.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from podckpt.api import InvalidValueError, parse_quantity

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

    @property
    def all_unlimited(self) -> bool:
        return len(self.unlimited) == self.count


def checkpointed_memory(containers: Iterable[Mapping[str, Any]], assumed: int) -> Memory:
    total = 0
    count = 0
    unlimited: list[str] = []
    for container in containers:
        count += 1
        limit = memory_limit(container)
        if limit is None:
            unlimited.append(container["name"])
            limit = assumed
        total += limit
    return Memory(total, tuple(unlimited), count)


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
    Without any memory limit the size cannot be derived and `default_bytes` is used.
    """
    if memory.count == 0 or memory.all_unlimited:
        return _round_mib(default_bytes)
    generation = memory.total * (1 + headroom_fraction) + headroom_bytes
    return _round_mib(math.ceil(generation * (keep + 1)))


def grace_period_seconds(memory_bytes: int, *, bytes_per_second: int, base_seconds: int) -> int:
    """Seconds to dump `memory_bytes`: a fixed part plus the dump at the assumed throughput."""
    return base_seconds + math.ceil(memory_bytes / bytes_per_second)


def format_bytes(size: int) -> str:
    """A Kubernetes quantity for a PVC request (`Mi` granularity)."""
    return f"{_round_mib(size) // MIB}Mi"


def _round_mib(size: int) -> int:
    return max(1, math.ceil(size / MIB)) * MIB
