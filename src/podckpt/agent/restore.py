"""Restore the newest usable generation, falling back to older ones.

A generation that does not belong in this container is not restored at all, and that is no
failure (`NotHere`): one made by this very pod (the container was restarted inside its pod by
a liveness probe, an OOM kill, a crash: the restart is meant to cure it), or by another
workload revision (a rollout, a changed spec: the new pod runs the new template).

Each candidate's manifest, sizes and small files are verified, its saved files are put back,
and `criu restore -d --restore-sibling --leave-stopped` makes the restored root the agent's own
child. The page images, the bulk of the bytes, are hashed while CRIU reads them, not before
(integrity.py): the tree stays stopped until they match. The PID counter is then moved above
the application's range (pids.py) and the tree is continued. `restore-mode: lazy` (or a large
checkpoint where the container allows it) continues the tree before its memory is in
(lazy.py). A generation that fails is marked FAILED and never tried again, so a bad image can
never crash-loop the container.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from podckpt.api.criuopts import Phase, for_phase, has, mirrored

from . import criu, deadline, files, integrity, lazy, log, pids, proctree, stdio
from .context import Context
from .errors import (
    AgentError,
    CriuFailedError,
    CriuRunError,
    FilesError,
    GenerationInvalidError,
    GpuError,
)
from .generations import FAILED, Generation, Removed
from .inputs import BadInput
from .log import Timer
from .manifest import Manifest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from . import gpu

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
    #: A lazy restore's page transfer, still running (the supervisor watches it).
    lazy: lazy.LazyTransfer | None = None


class GenerationRefused(GenerationInvalidError):
    """A sound generation that is not for this container (another program, another CRIU):
    not marked FAILED, so that it is still there if the fresh start that follows fails
    (a mistyped command must not cost the checkpoint that fixing it would restore)."""


def inherit_map(streams: dict[str, str]) -> dict[int, str]:
    """fd number CRIU gets → dumped identity it replaces (`pipe:[1234]`, `tty[...]`,
    `file[...]`), once per identity (stdio.inherit_map)."""
    return stdio.inherit_map(streams, _FD_BASE)


def restore_options(manifest: Manifest, asked: tuple[str, ...]) -> tuple[str, ...]:
    """What the restore of this image needs from its dump (`tcp-established` dumped needs it
    at restore too), then the workload's restore options (which may say `tcp-close`)."""
    dumped = manifest.criu_options
    wanted = dict.fromkeys((*mirrored(dumped), *for_phase(asked, Phase.RESTORE)))
    if has(tuple(wanted), "tcp-close"):
        wanted.pop("tcp-established", None)
    return tuple(wanted)


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
    user = ctx.workload.get("user")
    if isinstance(user, list) and user != [0, 0] and dumped.get("user") != user:
        # A non-root application is never resumed from a checkpoint of another user's, or
        # of one that does not say (root, with runAsNonRoot, would come back as root).
        return NotHere(
            NEW_REVISION,
            gen.name,
            f"generation {gen.name} was made as user {dumped.get('user', 'unknown')}, this pod"
            f" runs its application as {user}",
        )
    for key in ("revision", "image", "argv", "user"):
        if key in dumped and key in ctx.workload and dumped[key] != ctx.workload[key]:
            return NotHere(
                NEW_REVISION,
                gen.name,
                f"generation {gen.name} was made by {key} {dumped[key]!r}, this pod runs"
                f" {ctx.workload[key]!r}",
            )
    return None


def try_restore(
    ctx: Context,
    gen: Generation,
    manifest: Manifest | None = None,
    *,
    mode: str | None = None,
    asked: tuple[str, ...] = (),
) -> tuple[int, Manifest, dict[str, Any], lazy.LazyTransfer | None]:
    """Restore one generation (whose `store.check`ed manifest may be given); returns the root
    PID (running), the manifest, what the restore measured and, for a lazy restore, its page
    transfer (still running). `asked`: the workload's restore options.

    Full restore: the page images are verified while CRIU reads them (integrity.py); the tree
    stays stopped until they match and is killed unrun when they do not. Lazy restore
    (lazy.py): they are verified while the daemon serves them to the running tree."""
    if manifest is None:
        manifest = ctx.store.check(gen)
    _compatible(ctx, gen, manifest)
    mismatch = stdio.unrestorable(manifest.stdio, ctx.stdio_fds)
    if mismatch is not None:
        raise GenerationRefused(gen.name, mismatch)
    options = restore_options(manifest, asked)
    gpu_plan = _gpu_plan(gen, manifest)  # before the checksums: cheap, and may refuse
    ctx.store.verify_contents(gen, manifest, exclude=integrity.is_page_image)
    pages = {rel: e for rel, e in manifest.files.items() if integrity.is_page_image(rel)}
    root = manifest.root_pid
    if root is None:
        raise GenerationInvalidError(gen.name, "manifest.json records no root pid")
    transfer = _lazy_transfer(ctx, gen, manifest, mode) if gpu_plan is None else None
    verifier = None if transfer else integrity.PageVerifier(gen.path, pages).start()
    try:
        result, written, closed_because = _criu_restore(
            ctx, gen, manifest, root, transfer, options=options
        )
    except BaseException as exc:
        if verifier is not None:
            verifier.cancel()
        if transfer is not None:
            transfer.abort()
            if isinstance(exc, CriuFailedError | CriuRunError):
                raise lazy.LazyRestoreFailed(gen.name, f"lazy restore: {exc}") from exc
        raise
    waited = Timer()
    error = verifier.result() if verifier is not None else None
    if error is not None:
        proctree.kill_tree(root)  # stopped, never ran; reaped by reap_leftovers()
        files.remove(written)
        raise GenerationInvalidError(gen.name, error)
    if transfer is not None:
        transfer.started(root, pages)
    floor = pids.raise_floor()
    # Not the tasks the application had stopped itself; those stopped by another signal
    # than SIGSTOP get it back (--leave-stopped stopped them all with SIGSTOP).
    proctree.continue_tree(root, keep_stopped=manifest.stopped_pids)
    proctree.restop(manifest.stop_signals)
    measured: dict[str, Any] = {
        "restore_stats": result.stats,
        "restore_s": result.duration_s,
        "pid_floor": floor.as_dict(),
        "verify_wait_s": round(waited.elapsed(), 4) if verifier is not None else None,
        "mode": "lazy" if transfer is not None else "full",
        "restore_options": list(options),
        "connections_closed": closed_because,
    }
    if gpu_plan is not None:
        from . import gpu  # noqa: PLC0415 - only for generations with GPU state

        highest = lazy.highest_pid(root)
        try:
            gpu.resume_restored(gpu_plan, root)  # the tree runs: the driver needs its thread
        except GpuError:
            files.remove(written)
            # The floor is above 300 now: the next attempt's CRIU (and the agent's hashing
            # threads) would take the ended tree's PIDs and TIDs, which it restores again.
            pids.raise_floor(highest + 1)
            raise
        measured["gpu"] = gpu_plan.timings()
    return root, manifest, measured, transfer


def _lazy_transfer(
    ctx: Context, gen: Generation, manifest: Manifest, mode: str | None
) -> lazy.LazyTransfer | None:
    """A started lazy-pages daemon when this restore is lazy (lazy.choose), else None."""
    chosen, why_not = lazy.choose(ctx, gen, manifest, mode)
    if not chosen:
        if why_not is not None and mode == "lazy":
            log.emit("restore", "full", generation=gen.name, why=why_not)
        return None
    transfer = lazy.LazyTransfer(ctx, gen)
    try:
        transfer.start_daemon()
    except (CriuFailedError, CriuRunError) as exc:
        transfer.close()
        ctx.store.mark(gen, lazy.LAZY_FAILED)
        log.emit("restore", "full", generation=gen.name, why=f"lazy restore unavailable: {exc}")
        return None
    return transfer


def _criu_restore(
    ctx: Context,
    gen: Generation,
    manifest: Manifest,
    root: int,
    transfer: lazy.LazyTransfer | None,
    *,
    options: tuple[str, ...] = (),
) -> tuple[criu.CriuResult, list[str], str | None]:
    """Put the saved files back and run CRIU; the restored tree is left stopped. Returns
    CRIU's result, the files put back and, when `tcp-established` could not be kept, why.

    With `tcp-established`, a restore that fails (the pod's IP is not the dumped one, or the
    network does not allow it) is run once more with `--tcp-close`: the application comes
    back with its connections closed, as without the option."""
    written = files.put_back(gen.path, manifest.setid_files)
    inherit = inherit_map(manifest.stdio)
    passed: list[int] = []
    closed_because: str | None = None

    def run(chosen: tuple[str, ...]) -> criu.CriuResult:
        args = criu.restore_args(
            gen.images, None, inherit, privileged=ctx.privileged, options=chosen
        )
        if transfer is not None:
            args += transfer.restore_args()
        return criu.run(ctx.criu, "restore", args, gen.path / "restore.log", pass_fds=passed)

    try:
        for fd in inherit:
            os.dup2(ctx.stdio_fds[fd - _FD_BASE], fd, inheritable=True)
            passed.append(fd)
        try:
            result = run(options)
        except CriuFailedError as exc:
            if not has(options, "tcp-established") or transfer is not None:
                raise
            closed_because = str(exc)
            reap_leftovers()
            result = run((*(o for o in options if o != "tcp-established"), "tcp-close"))
        _check_child(root)
    except BaseException:
        files.remove(written)
        raise
    finally:
        for fd in passed:
            os.close(fd)
    return result, written, closed_because


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


def _closed_why(error: str | None) -> str | None:
    if error is None:
        return None
    return f"the restore with tcp-established failed ({error[-300:]}); restored with tcp-close"


def _process_age() -> float | None:
    from .appstart import process_age  # noqa: PLC0415 - the supervisor is the caller

    return process_age()


def log_cleanup(removed: list[Removed]) -> None:
    """One line per reason: what was removed and what had happened to it."""
    reasons: dict[str, list[str]] = {}
    for item in removed:
        reasons.setdefault(item.why, []).append(item.name)
    for why, names in reasons.items():
        damaged = why.startswith("committed")
        log.emit("cleanup", "damaged" if damaged else "ok", removed=names, why=why)


def restore_latest(
    ctx: Context,
    *,
    diagnosis: bool,
    mode: str | None = None,
    options: tuple[str, ...] = (),
) -> Restored | NotHere | None:
    """Try every candidate, newest first. None: nothing could be restored. NotHere: the
    newest candidate (or the next after failed ones) does not belong in this container;
    nothing older is tried (it is the past of the same program). `mode`: the `restore-mode`
    key (lazy, full; None: by size, lazy.choose). `options`: the workload's restore options
    (`restore-advanced-options`, `MMC_RESTORE_ADVANCED_OPTIONS`)."""
    store = ctx.store
    attempts: list[dict[str, str]] = []
    if ctx.pre_restore_floor is not None:
        ctx.pre_restore_floor.result()  # finished (and its helper reaped) before CRIU runs
        ctx.pre_restore_floor = None
    with store.lock():
        log_cleanup(store.cleanup())
        if store.latest_problem:
            log.emit("store", "damaged", error=store.latest_problem, then="newest manifest used")
        for gen in store.candidates():
            restored = _restore_one(ctx, gen, attempts, mode, options)
            if restored is None:
                continue
            if isinstance(restored, Restored) and restored.lazy is None:
                # After the log line: removing a large generation takes a while, and the
                # application already runs. A lazy restore still reads this generation: the
                # supervisor retires it once the last page is in.
                store.retire(gen, diagnosis=diagnosis)
            return restored
    return None


def _restore_one(
    ctx: Context,
    gen: Generation,
    attempts: list[dict[str, str]],
    mode: str | None,
    options: tuple[str, ...] = (),
) -> Restored | NotHere | None:
    """One candidate: restored, not for here, or None (logged, in `attempts`, marked when it
    must be)."""
    store = ctx.store
    while True:
        timer = Timer()
        try:
            checked = store.check(gen)
            elsewhere = not_here(ctx, gen, checked)
            if elsewhere is not None:
                return elsewhere
            root, manifest, measured, transfer = try_restore(
                ctx, gen, checked, mode=mode, asked=options
            )
        except lazy.LazyRestoreFailed as exc:
            # CRIU's lazy restore failed where a full one may not: try this one again, in full.
            log.emit("restore", "failed", timer.elapsed(), generation=gen.name, mode="lazy",
                     error=str(exc), then="restoring it in full")  # fmt: skip
            store.mark(gen, lazy.LAZY_FAILED)
            reap_leftovers()
            mode = "full"
            continue
        except GenerationRefused as exc:
            attempts.append({"generation": gen.name, "error": str(exc)})
            log.emit("restore", "refused", timer.elapsed(), generation=gen.name, why=str(exc))
            return None
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
            return None
        except (OSError, ValueError, BadInput) as exc:
            error = AgentError(f"restore of {gen.name}: {exc}")
            attempts.append({"generation": gen.name, "error": str(error)})
            log.emit("restore", "failed", timer.elapsed(), generation=gen.name, error=str(error))
            store.mark(gen, FAILED)
            reap_leftovers()
            return None
        break
    log.emit(
        "restore",
        "ok",
        timer.elapsed(),
        generation=gen.name,
        fallback=bool(attempts) or None,
        skipped=[a["generation"] for a in attempts] or None,
        pid=root,
        since_process_start_s=_process_age(),
        mode=measured["mode"],
        criu_s=round(measured["restore_s"], 4),
        verify_wait_s=measured["verify_wait_s"],
        pid_floor=measured["pid_floor"],
        criu_options=measured["restore_options"] or None,
        connections_closed=_closed_why(measured["connections_closed"]),
        criu=measured["restore_stats"],
        authenticated=manifest.authenticated if store.trust.key else None,
        gpu=measured.get("gpu"),
    )
    if measured["connections_closed"]:
        log.emit(
            "connections",
            "closed",
            generation=gen.name,
            why="tcp-established: the connections could not be restored here (the pod's IP"
            " or network differs); restored with tcp-close instead",
            error=measured["connections_closed"],
        )
    ctx.throughput = deadline.from_body(manifest.body) or ctx.throughput
    return Restored(gen.name, root, manifest, attempts, transfer)
