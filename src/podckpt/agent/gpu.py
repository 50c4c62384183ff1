"""GPU processes around a dump and a restore: the CUDA driver moves GPU state into the
process's host memory before CRIU dumps it, and back after CRIU restored it.

Dump (checkpoint.dump): find the tasks of the tree that map the driver library (`scan`,
/proc only); refuse what cannot work (MIG, MPS, several NCCL processes); then `suspend`:
lock every CUDA process (with a timeout: the lock waits for CUDA calls in flight), checkpoint
each (GPU memory → host memory; the process keeps running, its CUDA calls block), and check
that none still holds a `/dev/nvidia*` file (managed/UVM memory or CUDA IPC would leave one,
and CRIU cannot dump it). Any failure is undone (`undo`: restore, unlock) before it is raised,
so the application runs on as it was and gets its SIGTERM.

Restore (restore.try_restore, gpurestore.py): `plan_restore` refuses a generation whose GPU
model and count differ from this container's before CRIU runs; after `criu restore` (tree
stopped), the PID floor and SIGCONT, `resume_restored` restores and unlocks every CUDA
process. The tree is continued *before* the GPU restore on purpose: the driver does the work
in a thread of the target process (CRIU's own CUDA plugin has to ptrace-resume that thread in
a frozen tree), and the measured sequence (../shared/gpu) restored a running process. Until
the unlock its CUDA calls block, so the application cannot touch the GPU before its memory is
back. A failure ends the restored tree (`end_tree`) and the generation fails like any failed
restore.
"""

from __future__ import annotations

import dataclasses
import os

from podckpt.api.contract import Env

from . import log, proctree
from .errors import GpuError, UnsupportedProcessError
from .log import Timer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from contextlib import AbstractContextManager
    from typing import Any

    from . import cuda

LOCK_TIMEOUT_ENV = Env.GPU_LOCK_TIMEOUT
#: As CRIU's CUDA plugin (its default --timeout): CUDA work in flight gets 10 s to finish.
DEFAULT_LOCK_TIMEOUT_S = 10.0
_DEVICE_PREFIX = "/dev/nvidia"
_MIG_PREFIX = "/dev/nvidia-caps/"
_MPS_DEFAULT_PIPE = "/tmp/nvidia-mps"  # noqa: S108 - NVIDIA's default MPS pipe directory
_TIMEOUT = 909  # CUDA_ERROR_TIMEOUT


@dataclasses.dataclass
class Candidates:
    """Tasks of the tree that map the CUDA driver library, as /proc shows them."""

    pids: list[int]
    #: The driver library the application maps (the agent loads the same file).
    library: str | None
    #: pid -> the `/dev/nvidia*` files it holds open or mapped.
    device_files: dict[int, list[str]]


@dataclasses.dataclass
class Suspended:
    """CUDA processes whose GPU state is in their host memory, ready for CRIU."""

    driver: cuda.Driver
    pids: list[int]
    devices: list[cuda.Device]
    lock_s: float = 0.0
    checkpoint_s: float = 0.0
    resume_s: float | None = None

    def record(self) -> dict[str, Any]:
        """The manifest's `gpu` entry: what a restore must find again."""
        names = [d.name for d in self.devices]
        return {
            "processes": self.pids,
            "model": names[0] if names and len(set(names)) == 1 else None,
            "count": len(names),
            "devices": [d.as_dict() for d in self.devices],
            "driver_version": self.driver.release,
            "cuda_version": self.driver.cuda_version,
            "library": self.driver.path,
        }

    def timings(self) -> dict[str, Any]:
        return {
            "processes": self.pids,
            "lock_s": round(self.lock_s, 4),
            "checkpoint_s": round(self.checkpoint_s, 4),
        }


def lock_timeout_ms() -> int:
    text = os.environ.get(LOCK_TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_LOCK_TIMEOUT_S
    except ValueError:
        seconds = DEFAULT_LOCK_TIMEOUT_S
    if not seconds > 0:  # 0 would mean "no timeout" to the driver; NaN too
        seconds = DEFAULT_LOCK_TIMEOUT_S
    return max(1, round(seconds * 1000))


# -- what /proc says -------------------------------------------------------------------------


def _maps_paths(pid: int) -> set[str]:
    paths = set()
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].startswith("/"):
                    paths.add(parts[5].rstrip("\n").removesuffix(" (deleted)"))
    except OSError:
        pass
    return paths


def device_files(pid: int) -> list[str]:
    """The `/dev/nvidia*` files a process holds open or mapped (none after a checkpoint)."""
    found = {p for p in _maps_paths(pid) if p.startswith(_DEVICE_PREFIX)}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        fds = []
    for fd in fds:
        target = proctree.fd_target(pid, int(fd))
        if target and target.startswith(_DEVICE_PREFIX):
            found.add(target)
    return sorted(found)


def _mps_pipe(pid: int) -> str | None:
    """The MPS control pipe a CUDA process would use, when an MPS daemon serves it."""
    pipe = _MPS_DEFAULT_PIPE
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"CUDA_MPS_PIPE_DIRECTORY="):
                    pipe = item.split(b"=", 1)[1].decode(errors="replace")
    except OSError:
        return None
    control = os.path.join(pipe, "control")
    return control if os.path.exists(control) else None


def scan(members: Sequence[int]) -> Candidates | None:
    """The tasks that map libcuda, or None. Refuses (UnsupportedProcessError) MIG, MPS and
    multi-process NCCL, which the driver's checkpoint does not support."""
    pids: list[int] = []
    library = None
    nccl: list[int] = []
    files: dict[int, list[str]] = {}
    for pid in members:
        paths = _maps_paths(pid)
        libcuda = sorted(p for p in paths if os.path.basename(p).startswith("libcuda.so"))
        if not libcuda:
            continue
        pids.append(pid)
        library = library or libcuda[0]
        files[pid] = device_files(pid)
        if any(os.path.basename(p).startswith("libnccl.so") for p in paths):
            nccl.append(pid)
        mig = [f for f in files[pid] if f.startswith(_MIG_PREFIX)]
        if mig:
            raise UnsupportedProcessError(
                f"process {pid} uses a MIG instance ({mig[0]}): the CUDA driver cannot"
                " checkpoint MIG partitions"
            )
        mps = _mps_pipe(pid)
        if mps:
            raise UnsupportedProcessError(
                f"process {pid} is a client of an MPS server ({mps}): the CUDA driver cannot"
                " checkpoint MPS clients"
            )
    if len(nccl) > 1:
        raise UnsupportedProcessError(
            f"processes {', '.join(map(str, nccl))} are a multi-process NCCL job: their GPU"
            " state is shared between processes, which the CUDA driver cannot checkpoint"
        )
    if not pids:
        return None
    return Candidates(pids, library, files)


# -- dump ------------------------------------------------------------------------------------


def suspend(
    found: Candidates, reading: Callable[[], AbstractContextManager[None]]
) -> Suspended | None:
    """Lock and checkpoint every CUDA process of `found`; None when none holds CUDA state.

    `reading()` is the context in which /proc of the application may be read (its user's
    fsuid). On any failure the processes are restored and unlocked again before the error
    is raised."""
    from . import cuda  # noqa: PLC0415 - ctypes only when the tree uses CUDA

    driver = cuda.load([found.library] if found.library else [])
    devices = driver.devices()
    mig = [d.name for d in devices if " MIG " in f" {d.name} "]
    if mig:
        raise UnsupportedProcessError(
            f"this container's GPU is a MIG instance ({mig[0]}): the CUDA driver cannot"
            " checkpoint MIG partitions"
        )
    pids = []
    for pid in found.pids:
        try:
            state = driver.state(pid)
        except GpuError as exc:
            if found.device_files.get(pid):
                raise UnsupportedProcessError(
                    f"process {pid} holds {found.device_files[pid][0]} but has no CUDA state"
                    f" the driver can checkpoint ({exc}); a process forked from a CUDA"
                    " process keeps its parent's device files (start workers with spawn)"
                ) from exc
            continue  # maps the library, never initialised CUDA: nothing to move
        if state != cuda.RUNNING:
            raise GpuError(
                f"process {pid} is already {cuda.STATE_NAMES.get(state, state)} by the CUDA"
                " driver (another checkpoint tool at work?)"
            )
        pids.append(pid)
    if not pids:
        return None
    held = Suspended(driver, pids, devices)
    timeout = lock_timeout_ms()
    try:
        for pid in pids:
            try:
                held.lock_s += driver.lock(pid, timeout)
            except GpuError as exc:
                if exc.code == _TIMEOUT:
                    raise GpuError(
                        f"cuCheckpointProcessLock({pid}) timed out after {timeout / 1000:g} s:"
                        " a CUDA call of the application did not finish"
                        f" (${LOCK_TIMEOUT_ENV} sets the timeout)",
                        code=exc.code,
                        call=exc.call,
                        pid=pid,
                    ) from exc
                raise
        for pid in pids:
            held.checkpoint_s += driver.checkpoint(pid)
        with reading():
            _check_released(pids)
    except BaseException:
        undo(driver, pids)
        raise
    return held


def _check_released(pids: Sequence[int]) -> None:
    """After the driver's checkpoint no `/dev/nvidia*` file may remain: CRIU cannot dump one."""
    for pid in pids:
        names = device_files(pid)
        if names:
            raise UnsupportedProcessError(
                f"process {pid} still holds {', '.join(names)} after the CUDA checkpoint:"
                " managed (UVM) memory or CUDA IPC, which the driver cannot checkpoint"
            )


def resume(held: Suspended) -> None:
    """After a dump that leaves the application running (periodic, on request): GPU state
    back and unlock, once the tree runs again. A failure is logged (`undo`), not raised: the
    generation is good, and only the application's CUDA calls are affected."""
    timer = Timer()
    undo(held.driver, held.pids)
    held.resume_s = round(timer.elapsed(), 4)


def undo(driver: cuda.Driver, pids: Sequence[int]) -> list[str]:
    """Bring every process back to running (restore if checkpointed, unlock if locked),
    whatever state a failure left it in. Never raises; returns the problems (also logged).
    The tree must be running: the driver works in a thread of each process."""
    from . import cuda  # noqa: PLC0415 - ctypes only when the tree uses CUDA

    problems = []
    for pid in pids:
        try:
            state = driver.state(pid)
            if state == cuda.CHECKPOINTED:
                driver.restore(pid)
                state = driver.state(pid)
            if state == cuda.LOCKED:
                driver.unlock(pid)
        except GpuError as exc:
            problems.append(str(exc))
    if problems:
        log.emit("gpu", "undo-failed", processes=list(pids), errors=problems)
    return problems
