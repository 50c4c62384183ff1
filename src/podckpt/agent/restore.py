"""Restore the newest usable generation, falling back to older ones.

A generation that does not belong in this container is not restored at all, and that is no
failure (`NotHere`): one made by this very pod (the container was restarted inside its pod by
a liveness probe, an OOM kill, a crash: the restart is meant to cure it), or by another
workload revision (a rollout, a changed spec: the new pod runs the new template).

Each candidate is verified (manifest, sizes, checksums), its saved files are put back, and
`criu restore -d --restore-sibling --leave-stopped` makes the restored root the agent's own
child. The PID counter is then moved above the application's range (pids.py) and the tree is
continued. A generation that fails is marked FAILED and never tried again, so a bad image can
never crash-loop the container.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from . import criu, files, log, pids, proctree
from .context import Context
from .errors import (
    AgentError,
    CriuFailedError,
    CriuRunError,
    FilesError,
    GenerationInvalidError,
    GpuError,
)
from .inputs import BadInput
from .log import Timer
from .manifest import Manifest
from .store import FAILED, Generation, Removed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from . import gpu

_INHERITABLE = ("pipe:", "socket:")
_FD_BASE = 100  # the new stdio is passed to CRIU at fds 100-102, its own stdio stays captured


@dataclasses.dataclass(frozen=True)
class NotHere:
    """The newest generation does not belong in this container; it starts fresh."""

    #: `SamePod` or `NewRevision` (the controller's `StartedFresh` Event names it).
    cause: str
    generation: str
    why: str


SAME_POD = "SamePod"
NEW_REVISION = "NewRevision"


@dataclasses.dataclass(frozen=True)
class Restored:
    generation: str
    root_pid: int
    manifest: Manifest
    attempts: list[dict[str, str]]


class GenerationRefused(GenerationInvalidError):
    """A sound generation that is not for this container (another program, another CRIU):
    not marked FAILED, so that it is still there if the fresh start that follows fails
    (a mistyped command must not cost the checkpoint that fixing it would restore)."""


def inherit_map(stdio: dict[str, str]) -> dict[int, str]:
    """fd number CRIU gets → dumped identity it replaces (`pipe:[1234]`), once per identity."""
    result: dict[int, str] = {}
    seen: set[str] = set()
    for fd in ("1", "2", "0"):
        key = stdio.get(fd)
        if key and key.startswith(_INHERITABLE) and key not in seen:
            seen.add(key)
            result[_FD_BASE + int(fd)] = key
    return result


def _compatible(ctx: Context, gen: Generation, manifest: Manifest) -> None:
    dumped = manifest.criu_version
    if dumped.split(".")[:2] != ctx.criu.version_text.split(".")[:2]:
        raise GenerationRefused(
            gen.name, f"dumped by CRIU {dumped}, this is CRIU {ctx.criu.version_text}"
        )


def not_here(ctx: Context, gen: Generation, manifest: Manifest) -> NotHere | None:
    """Why `gen` must not be restored into this container, if it must not.

    The same pod in the same node boot: the container was restarted inside its pod. (After
    a reboot of the node under the pod, the kubelet restarts its containers: that is no cure
    of the application, and the checkpoint comes back as for a new pod.) Another revision,
    image or argv: the pod runs a new template. Manifests of older agents lack these fields,
    and only what both sides know is compared."""
    made_by = manifest.origin
    ours = ctx.origin
    if (
        ours.get("pod_uid")
        and made_by.get("pod_uid") == ours["pod_uid"]
        and made_by.get("boot_id") == ours.get("boot_id")
    ):
        return NotHere(
            SAME_POD,
            gen.name,
            f"generation {gen.name} was made by this pod; the container was restarted inside"
            " it (liveness or startup probe, OOM kill, crash or kill) and starts fresh",
        )
    dumped = manifest.workload or {}
    for key in ("revision", "image", "argv"):
        if key in dumped and key in ctx.workload and dumped[key] != ctx.workload[key]:
            return NotHere(
                NEW_REVISION,
                gen.name,
                f"generation {gen.name} was made by {key} {dumped[key]!r}, this pod runs"
                f" {ctx.workload[key]!r}",
            )
    return None


def try_restore(
    ctx: Context, gen: Generation, manifest: Manifest | None = None
) -> tuple[int, Manifest, dict[str, Any]]:
    """Restore one generation (whose `store.check`ed manifest may be given); returns the root
    PID (running), the manifest and what the restore measured."""
    if manifest is None:
        manifest = ctx.store.check(gen)
    _compatible(ctx, gen, manifest)
    gpu_plan = _gpu_plan(gen, manifest)  # before the checksums: cheap, and may refuse
    ctx.store.verify_contents(gen, manifest)
    written = files.put_back(gen.path, manifest.setid_files)
    root = manifest.root_pid
    if root is None:
        raise GenerationInvalidError(gen.name, "manifest.json records no root pid")
    inherit = inherit_map(manifest.stdio)
    passed = []
    try:
        for fd in inherit:
            os.dup2(ctx.stdio_fds[fd - _FD_BASE], fd, inheritable=True)
            passed.append(fd)
        result = criu.run(
            ctx.criu,
            "restore",
            criu.restore_args(gen.images, None, inherit, privileged=ctx.privileged),
            gen.path / "restore.log",
            pass_fds=passed,
        )
        _check_child(root)
    except BaseException:
        files.remove(written)
        raise
    finally:
        for fd in passed:
            os.close(fd)
    floor = pids.raise_floor()
    proctree.continue_tree(root)
    measured: dict[str, Any] = {
        "restore_stats": result.stats,
        "restore_s": result.duration_s,
        "pid_floor": floor.as_dict(),
    }
    if gpu_plan is not None:
        from . import gpu  # noqa: PLC0415 - only for generations with GPU state

        try:
            gpu.resume_restored(gpu_plan, root)  # the tree runs: the driver needs its thread
        except GpuError:
            files.remove(written)
            raise
        measured["gpu"] = gpu_plan.timings()
    return root, manifest, measured


def _gpu_plan(gen: Generation, manifest: Manifest) -> gpu.RestorePlan | None:
    """The same GPU model and count as at the dump, else GenerationRefused (before CRIU)."""
    if manifest.body.get("gpu") is None:
        return None
    from . import gpu  # noqa: PLC0415 - ctypes and the driver only for GPU generations

    try:
        return gpu.plan_restore(gen.name, manifest.body)
    except gpu.GpuMismatchError as exc:
        raise GenerationRefused(gen.name, exc.reason) from exc


def _check_child(pid: int) -> None:
    """CRIU restored the root at its dumped PID as the agent's child (--restore-sibling)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            ppid = next((line.split()[1] for line in status if line.startswith("PPid:")), "")
    except OSError:
        ppid = ""
    if ppid != str(os.getpid()):
        raise CriuRunError(f"criu restore exited 0 but process {pid} is not the agent's child")


def reap_leftovers(timeout: float = 2.0) -> None:
    """Reap what a failed `criu restore --restore-sibling` left: it kills the tasks it had
    created, which are the agent's children, so they stay zombies holding their PIDs until
    the agent reaps them, and the next (older) generation's restore then fails with `Can't
    fork for 301: File exists` (found by the fault-injection suite). Before the application
    runs, every child of the agent is such a leftover."""
    import time  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)


def log_cleanup(removed: list[Removed]) -> None:
    """One line per reason: what was removed and what had happened to it."""
    reasons: dict[str, list[str]] = {}
    for item in removed:
        reasons.setdefault(item.why, []).append(item.name)
    for why, names in reasons.items():
        damaged = why.startswith("committed")
        log.emit("cleanup", "damaged" if damaged else "ok", removed=names, why=why)


def restore_latest(ctx: Context, *, diagnosis: bool) -> Restored | NotHere | None:
    """Try every candidate, newest first. None: nothing could be restored. NotHere: the
    newest candidate (or the next after failed ones) does not belong in this container;
    nothing older is tried (it is the past of the same program)."""
    store = ctx.store
    attempts: list[dict[str, str]] = []
    with store.lock():
        log_cleanup(store.cleanup())
        if store.latest_problem:
            log.emit("store", "damaged", error=store.latest_problem, then="newest manifest used")
        for gen in store.candidates():
            timer = Timer()
            try:
                checked = store.check(gen)
                elsewhere = not_here(ctx, gen, checked)
                if elsewhere is not None:
                    return elsewhere
                root, manifest, measured = try_restore(ctx, gen, checked)
            except GenerationRefused as exc:
                attempts.append({"generation": gen.name, "error": str(exc)})
                log.emit("restore", "refused", timer.elapsed(), generation=gen.name, why=str(exc))
                continue
            except (
                GenerationInvalidError,
                CriuFailedError,
                CriuRunError,
                FilesError,
                GpuError,
            ) as exc:
                attempts.append({"generation": gen.name, "error": str(exc)})
                log.emit("restore", "failed", timer.elapsed(), generation=gen.name, error=str(exc))
                store.mark(gen, FAILED)
                reap_leftovers()
                continue
            except (OSError, ValueError, BadInput) as exc:
                error = AgentError(f"restore of {gen.name}: {exc}")
                attempts.append({"generation": gen.name, "error": str(error)})
                log.emit(
                    "restore", "failed", timer.elapsed(), generation=gen.name, error=str(error)
                )
                store.mark(gen, FAILED)
                reap_leftovers()
                continue
            log.emit(
                "restore",
                "ok",
                timer.elapsed(),
                generation=gen.name,
                fallback=bool(attempts) or None,
                skipped=[a["generation"] for a in attempts] or None,
                pid=root,
                criu_s=round(measured["restore_s"], 4),
                pid_floor=measured["pid_floor"],
                criu=measured["restore_stats"],
                authenticated=manifest.authenticated if store.trust.key else None,
                gpu=measured.get("gpu"),
            )
            # After the log line: removing a large generation takes a while, and the
            # application already runs.
            store.retire(gen, diagnosis=diagnosis)
            return Restored(gen.name, root, manifest, attempts)
    return None
