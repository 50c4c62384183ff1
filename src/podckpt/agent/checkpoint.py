"""Dump the application's tree and commit it as a new generation.

Order, and why:
1. `criu dump --leave-stopped`: the tree is dumped and stays stopped, so the files it holds
   open keep exactly the size CRIU recorded;
2. the open files (and `checkpoint-files`) are copied into the generation while it is stopped;
3. periodic/on-request checkpoint: the tree is continued now, before the slow part;
4. checksums (page images hashed while CRIU wrote them, integrity.py), fsync of every file at
   once (durable.py), manifest written last, LATEST renamed (store.commit);
5. final checkpoint (SIGTERM): only now is the tree killed. If anything failed, it is continued
   instead, so the application still gets its SIGTERM and its chance to exit gracefully.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil

from podckpt.api import CheckpointSettings, Key, qualified
from podckpt.api.criuopts import Phase, for_phase

from . import (
    AGENT_VERSION,
    criu,
    deadline,
    filechoice,
    files,
    gpu,
    images,
    integrity,
    log,
    proctree,
    stdio,
)
from .context import Context
from .errors import (
    AgentError,
    CriuFailedError,
    FilesError,
    StoreWriteError,
    UnsupportedProcessError,
)
from .log import Timer


@dataclasses.dataclass(frozen=True)
class DumpOutcome:
    generation: str
    duration_s: float
    stats: dict[str, int]
    bytes: int


def check_supported(root: int) -> tuple[int, int]:
    """Refuse, in one clear line, what CRIU would refuse with a cryptic one. Returns the one
    (uid, gid) every process of the tree runs as: CRIU's dump runs as that user (asuser.py)."""
    members = proctree.members(root)
    users: set[int] = set()
    groups: set[int] = set()
    for pid in members:
        users.update(proctree.uids(pid)[:3])  # real, effective, saved: what prlimit compares
        groups.update(proctree.gids(pid)[:3])
    if len(users) > 1:
        raise UnsupportedProcessError(
            "the application's processes run as different users (uids "
            + ", ".join(map(str, sorted(users)))
            + "): CRIU cannot checkpoint such a tree from inside the container"
        )
    if len(groups) > 1:
        raise UnsupportedProcessError(
            "the application's processes run with different groups (gids "
            + ", ".join(map(str, sorted(groups)))
            + "): CRIU cannot checkpoint such a tree from inside the container"
        )
    uid, gid = (users.pop() if users else 0, groups.pop() if groups else 0)
    with _reading_proc_of(uid, gid):
        _check_members(members)
    return uid, gid


def _reading_proc_of(uid: int, gid: int) -> contextlib.AbstractContextManager[None]:
    if (uid, gid) == (0, 0):
        return contextlib.nullcontext()
    from . import asuser  # noqa: PLC0415 - ctypes, only for applications not run as root

    return asuser.reading_proc_of(uid, gid)


def _check_members(members: list[int]) -> None:
    own_ipc = _ns("self", "ipc")
    for pid in members:
        for fd in _list(f"/proc/{pid}/fd"):
            if proctree.fd_target(pid, int(fd)) == "anon_inode:[io_uring]":
                raise UnsupportedProcessError(
                    f"process {pid} holds an io_uring instance, which CRIU cannot checkpoint;"
                    f" set {qualified(Key.CHECKPOINT_IO_URING)}: deny (its runtime then falls"
                    " back to epoll)"
                )
        if _ns(str(pid), "ipc") == own_ipc and (_has_sysv_shm(pid) or _uses_sysv_msg(pid)):
            raise UnsupportedProcessError(
                f"process {pid} uses System V IPC of the pod's IPC namespace; CRIU saves it"
                " only with an IPC namespace of the application's own: set"
                f" {qualified(Key.CHECKPOINT_IPC_NAMESPACE)}: private"
            )


def _list(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _ns(pid: str, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _has_sysv_shm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return any(" /SYSV" in line for line in maps)
    except OSError:
        return False


def deadline_decision(ctx: Context, root: int, sigterm_at: float) -> deadline.Decision | None:
    """Whether a final dump fits into the grace period's rest (deadline.py); None when the
    webhook handed no grace period over (then the dump is always tried)."""
    grace = deadline.grace_period()
    if grace is None:
        return None
    ids = proctree.uids(root)[:1] + proctree.gids(root)[:1]
    uid, gid = ids if len(ids) == 2 else (0, 0)
    with _reading_proc_of(uid, gid):
        members = proctree.members(root)
        return deadline.decide(
            members, grace_s=grace, sigterm_at=sigterm_at, throughput=ctx.throughput
        )


def _uses_sysv_msg(pid: int) -> bool:
    """A message queue of the namespace last sent to or received by `pid` (the kernel keeps
    no other owner record for queues; semaphores have none at all)."""
    try:
        with open("/proc/sysvipc/msg") as queues:
            lines = queues.read().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) >= 7 and str(pid) in (fields[5], fields[6]):
            return True
    return False


def dump(
    ctx: Context, root: int, settings: CheckpointSettings, *, final: bool, reason: str
) -> DumpOutcome:
    """Checkpoint the tree of `root`. On success with `final` the tree is dead; in every other
    case it runs on. Raises AgentError (the store's previous generation is untouched)."""
    timer = Timer()
    store = ctx.store
    with store.lock():
        uid, gid = check_supported(root)
        as_user = (uid, gid) != (0, 0)
        preexec = None
        if as_user:
            from . import asuser  # noqa: PLC0415 - ctypes, only for applications not run as root

            asuser.check(uid, gid)
            preexec = asuser.preexec(uid, gid)
        # CRIU as another user than root runs in its unprivileged mode only.
        privileged = ctx.privileged and not as_user
        with _reading_proc_of(uid, gid):
            streams = stdio.identities(root)
            stopped_before = proctree.stopped(proctree.members(root))
            cuda_tasks = gpu.scan(proctree.members(root))
        options = for_phase(settings.checkpoint_options, Phase.DUMP)
        keep_stopped: list[int] = stopped_before
        stop_signals: dict[str, int] = {}
        gen = store.begin()
        stopped = False
        suspended: gpu.Suspended | None = None
        hasher = integrity.ImageHasher(gen.path)
        try:
            if cuda_tasks is not None:
                # GPU state into host memory first: CRIU cannot dump the driver's device files.
                suspended = gpu.suspend(cuda_tasks, lambda: _reading_proc_of(uid, gid))
            hasher.start()
            try:
                result = criu.run(
                    ctx.criu,
                    "dump",
                    criu.dump_args(
                        root,
                        gen.images,
                        privileged=privileged,
                        irmap_scan_paths=settings.irmap_scan_paths,
                        options=options,
                        externals=stdio.dump_externals(streams),
                    ),
                    gen.path / "dump.log",
                    preexec=preexec,
                    umask=0o077,
                )
            except CriuFailedError as exc:
                raise _explain_full(ctx, exc) from exc
            finally:
                digests = hasher.finish()
            stopped = True
            stopped_timer = Timer()
            from_images = images.stopped_tasks(gen.images)
            if from_images is not None:
                keep_stopped = sorted(from_images)
                stop_signals = {str(p): s for p, s in from_images.items() if s}
            log.emit(
                "dump",
                "ok",
                result.duration_s,
                reason=reason,
                generation=gen.name,
                pid=root,
                criu_user=f"{uid}:{gid}" if as_user else None,
                criu=result.stats,
                gpu=suspended.timings() if suspended else None,
            )
            with _reading_proc_of(uid, gid):
                members = proctree.members(root)
                # The tree is stopped: these are all it dumped (root, should it be gone).
                highest = max(root, proctree.highest_id(members))
                found, dirs = filechoice.open_files(
                    members, exclude=ctx.exclude, changed_since=ctx.lineage_start
                )
            extra_files, extra_dirs = filechoice.expand(settings.files)
            try:
                saved = files.save([*found, *extra_files], [*dirs, *extra_dirs], gen.path)
            except FilesError as exc:
                raise _explain_full(ctx, exc) from exc
            stopped_s = result.stats.get("frozen_time_us", 0) / 1e6 + stopped_timer.elapsed()
            if not final:
                proctree.continue_tree(root, keep_stopped)
                stopped = False
                if suspended is not None:
                    gpu.resume(suspended)
            commit_timer = Timer()
            manifest = store.commit(
                gen,
                {
                    "reason": reason,
                    "agent_version": AGENT_VERSION,
                    "criu_version": ctx.criu.version_text,
                    "criu_privileged": privileged,
                    "criu_user": [uid, gid] if as_user else None,
                    "root_pid": root,
                    "highest_pid": highest,
                    "stdio": streams,
                    "criu_options": list(options),
                    "stopped_pids": keep_stopped,
                    "stop_signals": stop_signals,
                    "lineage_start": ctx.lineage_start,
                    "workload": ctx.workload,
                    "origin": ctx.origin,
                    "saved_files": [e["path"] for e in saved if e["kind"] != "dir"],
                    # The only setuid/setgid files a restore will create (files.load_entries).
                    "setid_files": [e["path"] for e in saved if files.setid(e)],
                    "criu_stats": result.stats,
                    "gpu": suspended.record() if suspended else None,
                },
                digests,
                timer,
            )
            ctx.throughput = deadline.from_manifest(manifest) or ctx.throughput
            pruned = store.prune(settings.keep, diagnosis=settings.diagnosis)
            log.emit(
                "commit",
                "ok",
                commit_timer.elapsed(),
                generation=gen.name,
                bytes=manifest["total_bytes"],
                files=len(manifest["saved_files"]),
                app_stopped_s=round(stopped_s, 4),
                throughput_bps=(manifest.get("throughput") or {}).get("bytes_per_s"),
                gpu_resume_s=suspended.resume_s if suspended and not final else None,
                pruned=pruned or None,
            )
        except BaseException:
            if stopped:
                proctree.continue_tree(root, keep_stopped)
            if suspended is not None:
                gpu.undo(suspended.driver, suspended.pids)  # state-based: a no-op if resumed
            _keep_failed_log(ctx, gen.path / "dump.log", settings.diagnosis)
            store.discard(gen)
            raise
        if final:
            proctree.kill_tree(root)
        return DumpOutcome(gen.name, timer.elapsed(), result.stats, manifest["total_bytes"])


def _keep_failed_log(ctx: Context, dump_log: os.PathLike[str], diagnosis: bool) -> None:
    """The failed generation is removed; its CRIU log is kept beside the store for diagnosis."""
    if not os.path.exists(dump_log):
        return
    with contextlib.suppress(OSError):
        shutil.copyfile(dump_log, ctx.store_root / "last-failed-dump.log")


def _explain_full(ctx: Context, exc: AgentError) -> AgentError:
    """A CRIU or copy failure on a full store says so (decided by free space, not by text)."""
    free = ctx.store.free_bytes()
    if free is not None and free < (1 << 20):
        return StoreWriteError(
            f"checkpoint store {ctx.store_root} is full ({free} bytes free): {exc}"
        )
    return exc
