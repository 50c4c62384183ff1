"""Restore the newest usable generation, falling back to older ones.

Each candidate is first checked against this container (restorable.py: not for here, or
refused); then its manifest, sizes and small files are verified, and CRIU restores it, the
tree left stopped as the agent's own child (criurestore.py). The page images, the bulk of the
bytes, are hashed while CRIU reads them, not before (integrity.py): the tree stays stopped
until they match. The PID counter is moved above the tree's PIDs before CRIU runs (or, for a
generation that does not record them, above the application's range after it: pids.py) and
the tree is continued. `restore-mode: lazy` (or a large checkpoint where the container allows
it) continues the tree before its memory is in (lazy.py). A generation that fails is marked
FAILED and never tried again, so a bad image can never crash-loop the container.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from . import deadline, files, integrity, lazy, log, pids, proctree, readpace, stdio
from .context import Context
from .criurestore import criu_restore, lazy_transfer, reap_leftovers
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
from .restorable import (
    GenerationRefused,
    NotHere,
    check_compatible,
    gpu_restore_plan,
    not_here,
    restore_options,
)


@dataclasses.dataclass(frozen=True)
class Restored:
    generation: str
    root_pid: int
    manifest: Manifest
    attempts: list[dict[str, str]]
    #: A lazy restore's page transfer, still running (the supervisor watches it).
    lazy: lazy.LazyTransfer | None = None


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
    check_compatible(ctx, gen, manifest)
    mismatch = stdio.unrestorable(manifest.stdio, ctx.stdio_fds)
    if mismatch is not None:
        raise GenerationRefused(gen.name, mismatch)
    options = restore_options(manifest, asked)
    gpu_plan = gpu_restore_plan(gen, manifest)  # before the checksums: cheap, and may refuse
    ctx.store.verify_contents(gen, manifest, exclude=integrity.is_page_image)
    pages = {rel: e for rel, e in manifest.files.items() if integrity.is_page_image(rel)}
    root = manifest.root_pid
    if root is None:
        raise GenerationInvalidError(gen.name, "manifest.json records no root pid")
    clearing = pids.clearing_floor(manifest.highest_pid)
    if clearing is not None:
        # Usually done already, beside the imports (cli.restore_floor): CRIU, its helpers, the
        # page daemon and the verifier's threads take numbers above the tree's, and nothing
        # is left to burn between CRIU's exit and the tree running (pids.py).
        pids.raise_floor(clearing)
    transfer = lazy_transfer(ctx, gen, manifest, mode) if gpu_plan is None else None
    pace = None if transfer else readpace.TreeFill(root)
    verifier = None if transfer else integrity.PageVerifier(gen.path, pages, pace=pace).start()
    criu_at = time.monotonic()
    try:
        result, written, closed_because = criu_restore(
            ctx, gen, manifest, root, transfer, options=options
        )
    except BaseException as exc:
        if pace is not None:
            pace.release()
        if verifier is not None:
            verifier.cancel()
        if transfer is not None:
            transfer.abort()
            if isinstance(exc, CriuFailedError | CriuRunError):
                raise lazy.LazyRestoreFailed(gen.name, f"lazy restore: {exc}") from exc
        raise
    restored_at = time.monotonic()
    if pace is not None:
        pace.release()  # the tree is stopped with every page in: the rest as fast as it goes
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
        "restore_s": restored_at - criu_at,  # a lazy restore may have run CRIU twice
        "pid_floor": floor.as_dict(),
        "criu_at": criu_at,
        "verify_wait_s": round(waited.elapsed(), 4) if verifier is not None else None,
        "verify_pace": pace.summary() if pace is not None else None,
        "mode": "lazy" if transfer is not None else "full",
        "restore_options": list(options),
        "connections_closed": closed_because,
    }
    if gpu_plan is not None:
        from . import gpurestore  # noqa: PLC0415 - only for generations with GPU state

        highest = lazy.highest_pid(root)
        try:
            gpurestore.resume_restored(gpu_plan, root)  # the tree runs: the driver needs its thread
        except GpuError:
            files.remove(written)
            # The floor is above 300 now: the next attempt's CRIU (and the agent's hashing
            # threads) would take the ended tree's PIDs and TIDs, which it restores again.
            pids.raise_floor(highest + 1)
            raise
        measured["gpu"] = gpu_plan.timings()
    return root, manifest, measured, transfer


def transfer_daemon_s(transfer: lazy.LazyTransfer | None) -> float | None:
    return None if transfer is None else round(transfer.daemon_wait_s, 4)


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
        # What came before CRIU in this phase: the store's checks, the small images' checksums,
        # the lazy-pages daemon's spawn, the verifier's threads.
        before_criu_s=round(measured["criu_at"] - timer.start, 4),
        criu_s=round(measured["restore_s"], 4),
        # Part of criu_s: waiting for the daemon to listen, and a restore run again because it
        # started before the daemon listened (criurestore.py).
        lazy_daemon_wait_s=transfer_daemon_s(transfer),
        lazy_restore_retried=(transfer.restore_retried or None) if transfer else None,
        verify_wait_s=measured["verify_wait_s"],
        verify_pace=measured["verify_pace"],
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
