"""Whether a checkpoint can still finish before the kubelet's SIGKILL.

The webhook hands the agent the pod's grace period (`PODCKPT_GRACE_PERIOD_SECONDS`). At SIGTERM
the agent estimates the dump: the memory CRIU will write (the tree's anonymous, shared-memory
and swapped pages, from `/proc/PID/smaps_rollup`) over the throughput it measured on this
store's last dump (recorded in each manifest, store.commit), or over the operator's assumed
throughput before the first one. When that estimate does not fit in the time left, a dump would
only be cut by SIGKILL half-way: the application would lose both the checkpoint and its
graceful shutdown. So the agent does not start it; it forwards SIGTERM at once and says so
(`dump skipped`, a `CheckpointSkipped` Warning event). The previous generation stays.
"""

from __future__ import annotations

import dataclasses
import os
import time

from podckpt.api import contract

from .proctree import PROC

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

GRACE_ENV = contract.Env.GRACE_PERIOD
#: The operator's default assumption (operator settings `dump_bytes_per_second`), used until
#: this store has measured its own.
ASSUMED_BYTES_PER_S = 200 << 20
#: What a dump costs besides the bytes: CRIU's freeze and parasite, the agent's checks, saved
#: files, manifest, killing the tree and exiting.
FIXED_S = 1.0
#: The estimate is multiplied by this: a dump on a busy node is slower than the measured one.
MARGIN = 1.25
_SMAPS_FIELDS = ("Pss_Anon:", "Pss_Shmem:", "SwapPss:")


@dataclasses.dataclass(frozen=True)
class Throughput:
    bytes_per_s: int
    #: "measured" (this store's last dump) or "assumed".
    source: str


@dataclasses.dataclass(frozen=True)
class Decision:
    fits: bool
    bytes: int
    estimate_s: float
    left_s: float
    throughput: Throughput

    def as_dict(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "estimate_s": round(self.estimate_s, 2),
            "left_s": round(self.left_s, 2),
            "bytes_per_s": self.throughput.bytes_per_s,
            "throughput": self.throughput.source,
        }


def grace_period(env: dict[str, str] | None = None) -> float | None:
    """The pod's grace period as the webhook handed it over; None when absent or unusable
    (then the agent always tries: the behaviour before deadlines were known)."""
    text = (os.environ if env is None else env).get(GRACE_ENV, "")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value > 0 else None


def from_manifest(manifest: dict[str, Any]) -> Throughput | None:
    """The throughput a manifest recorded (store.commit), if it is usable."""
    return from_body(manifest)


def from_body(manifest: dict[str, Any]) -> Throughput | None:
    """The throughput a manifest's body recorded (store.commit), if it is usable."""
    record = manifest.get("throughput")
    if not isinstance(record, dict):
        return None
    value = record.get("bytes_per_s")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return Throughput(value, "measured")
    return None


def memory_to_dump(pids: list[int]) -> int:
    """Bytes CRIU will write for these processes: proportional anonymous, shared-memory and
    swapped pages (file-backed clean pages are not dumped)."""
    total = 0
    for pid in pids:
        try:
            text = (PROC / str(pid) / "smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(_SMAPS_FIELDS):
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    total += int(parts[1]) * 1024
    return total


def decide(
    pids: list[int],
    *,
    grace_s: float,
    sigterm_at: float,
    throughput: Throughput | None,
    now: float | None = None,
) -> Decision:
    """Does a dump of `pids` fit into what is left of the grace period that started at
    `sigterm_at` (time.monotonic())?"""
    rate = throughput or Throughput(ASSUMED_BYTES_PER_S, "assumed")
    size = memory_to_dump(pids)
    estimate = (FIXED_S + size / rate.bytes_per_s) * MARGIN
    left = grace_s - ((time.monotonic() if now is None else now) - sigterm_at)
    return Decision(estimate <= left, size, estimate, left, rate)
