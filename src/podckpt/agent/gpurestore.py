"""GPU state back after a restore: the restore half of the sequence gpu.py describes.

`plan_restore` refuses, before CRIU runs, a generation whose GPU model and count differ from
this container's (a refusal, not a failure); `resume_restored` restores and unlocks every CUDA
process of the restored, running tree, and ends the tree (`end_tree`) when that fails. Kept
apart from gpu.py (the dump side) because a restore needs none of the /proc scan or the
lock-and-checkpoint sequence.
"""

from __future__ import annotations

import dataclasses
import os
import time

from . import proctree
from .errors import AgentError, GenerationInvalidError, GpuError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from . import cuda


@dataclasses.dataclass
class RestorePlan:
    driver: cuda.Driver
    pids: list[int]
    #: (checkpointed GPU uuid, this container's GPU uuid) where they differ.
    pairs: list[tuple[str, str]]
    restore_s: float = 0.0
    unlock_s: float = 0.0

    def timings(self) -> dict[str, Any]:
        return {
            "processes": self.pids,
            "restore_s": round(self.restore_s, 4),
            "unlock_s": round(self.unlock_s, 4),
            "remapped": [f"{old}->{new}" for old, new in self.pairs] or None,
        }


def describe(names: Sequence[str]) -> str:
    """`1x NVIDIA H200`, `2x NVIDIA A100 + 1x NVIDIA L4`, `no GPU`."""
    if not names:
        return "no GPU"
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return " + ".join(f"{n}x {name}" for name, n in counts.items())


def _record(gen: str, manifest: dict[str, Any]) -> dict[str, Any] | None:
    record = manifest.get("gpu")
    if record is None:
        return None
    ok = (
        isinstance(record, dict)
        and isinstance(record.get("processes"), list)
        and all(type(p) is int and p > 0 for p in record["processes"])
        and isinstance(record.get("devices"), list)
        and all(
            isinstance(d, dict) and isinstance(d.get("name"), str)
            and isinstance(d.get("uuid"), str)
            for d in record["devices"]
        )
    )  # fmt: skip
    if not ok:
        raise GenerationInvalidError(gen, "malformed gpu entry in the manifest")
    checked: dict[str, Any] = record
    return checked


class GpuMismatchError(AgentError):
    """A sound generation whose GPU state this container cannot take (another GPU model or
    count, no GPU, no usable driver): refused, not failed (restorable.GenerationRefused)."""

    def __init__(self, gen: str, reason: str) -> None:
        self.reason = reason
        super().__init__(f"generation {gen}: {reason}")


def plan_restore(gen: str, manifest: dict[str, Any]) -> RestorePlan | None:
    """None for a generation without GPU state. GpuMismatchError for one whose GPU model and
    count differ from this container's, or when no driver is usable here;
    GenerationInvalidError for a malformed `gpu` entry."""
    record = _record(gen, manifest)
    if record is None:
        return None
    from . import cuda  # noqa: PLC0415 - ctypes only for generations with GPU state

    dumped = [d["name"] for d in record["devices"]]
    library = record.get("library")
    preferred = [library] if isinstance(library, str) and library.startswith("/") else []
    try:
        driver = cuda.load(preferred)
        here = driver.devices()
    except GpuError as exc:
        raise GpuMismatchError(
            gen, f"dumped with GPU state on {describe(dumped)}, but {exc}"
        ) from exc
    names = [d.name for d in here]
    if names != dumped:
        raise GpuMismatchError(
            gen,
            f"dumped on {describe(dumped)}, this container has {describe(names)}: GPU state"
            " is restored only onto the same GPU model and count",
        )
    pairs = [
        (old["uuid"], new.uuid)
        for old, new in zip(record["devices"], here, strict=True)
        if old["uuid"] != new.uuid
    ]
    if pairs and driver.cuda_version < cuda.GPU_PAIRS_CUDA_VERSION:
        pairs = []  # a 570 driver cannot be told; it restores onto what it finds, or fails
    return RestorePlan(driver, list(record["processes"]), pairs)


def resume_restored(plan: RestorePlan, root: int) -> None:
    """GPU restore, then unlock, of every CUDA process of the restored (running) tree. On
    failure the restored tree is ended before GpuError is raised."""
    try:
        for pid in plan.pids:
            plan.restore_s += plan.driver.restore(pid, plan.pairs)
        for pid in plan.pids:
            plan.unlock_s += plan.driver.unlock(pid)
    except GpuError:
        end_tree(root)
        raise


def end_tree(root: int, timeout: float = 10.0) -> None:
    """SIGKILL the restored tree and reap it, so that its PIDs are free for the next
    generation's restore (CRIU restores every task at its old PID)."""
    pids = proctree.members(root)
    proctree.kill_tree(root)
    deadline = time.monotonic() + timeout
    left = set(pids)
    while left and time.monotonic() < deadline:
        for pid in sorted(left):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = 0 if os.path.exists(f"/proc/{pid}") else pid
            if done:
                left.discard(pid)
        if left:
            time.sleep(0.01)
