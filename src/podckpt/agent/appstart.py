"""Starting the application: restore the newest usable generation when the store allows it,
else start the program fresh (posix_spawn, or fork + exec when it must run inside its own
namespaces, without the agent's capabilities or as another user).

A mixin of `Supervisor` (supervisor.py): the supervision loop and the start are separate
concerns, and a failed lazy restore starts the application again from the loop
(lazysupervision.py). Generations are retired only once a fresh start has succeeded, so a
mistyped command never costs the checkpoint that fixing it would restore.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from podckpt.api import RestorePolicy, contract

from . import log, pids, stdio
from .errors import AgentError, StoreError
from .log import Timer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from podckpt.api import CheckpointSettings

    from .appuser import AppUser
    from .context import Context
    from .generations import Generation
    from .isolation import Isolation
    from .lazy import LazyTransfer

#: Forwarded to the application as they come (supervisor.py), and reset to their default in a
#: freshly started application. SIGCHLD is ours; SIGKILL/SIGSTOP cannot be caught; synchronous
#: faults (SIGSEGV...) and terminal job control signals are not forwarded, as tini does.
FORWARDED = tuple(
    getattr(signal, name)
    for name in (
        "SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGTERM",
        "SIGCONT", "SIGWINCH", "SIGPWR", "SIGURG", "SIGVTALRM", "SIGPROF", "SIGIO",
    )
    if hasattr(signal, name)
)  # fmt: skip
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """When the agent is not PID 1 (a shared PID namespace), orphans must still come to it."""
    if os.getpid() == 1:
        return
    import ctypes  # noqa: PLC0415 - only needed outside PID 1; ctypes is slow to import

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def application_env(user: AppUser | None = None, etc: Path = Path("/etc")) -> dict[str, str]:
    """The container's environment, without the agent's own variables (`contract.Env`), and
    with the HOME the runtime would have given the application's user."""
    env = contract.application_environment(os.environ)
    if user is not None:
        from .appuser import application_home  # noqa: PLC0415 - only with a user

        home = application_home(user, os.environ, etc)
        if home is not None:
            env["HOME"] = home
    return env


def process_age() -> float | None:
    """Seconds since this process was created (exec included), at clock-tick resolution."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 3)


class ApplicationStart:
    """`start`: restore or start fresh, leaving the application's PID in `root`."""

    argv: list[str]
    settings: CheckpointSettings
    ctx: Context | None
    started_at: float
    root: int | None
    lazy: LazyTransfer | None
    early_floor: pids.EarlyFloor | None
    isolation: Isolation
    app_user: AppUser | None
    drop_capabilities: tuple[int, ...]
    _app_process: Any

    if TYPE_CHECKING:
        # The control socket's (controlserver.py).
        def control_opened(self) -> None: ...

    def start(self) -> None:
        """Restore when the store allows it, else start fresh. Raises AgentError.

        Generations are retired only once the fresh start has succeeded: an ARGV that does
        not exist (or any other failed start) must not cost the checkpoint that the fixed
        container would restore."""
        ctx = self.ctx
        policy = self.settings.restore_policy
        upto = None
        # A terminal the runtime made the agent's own must be the application's: CRIU
        # restores it as the restored session's, and a fresh application takes it.
        stdio.release_terminal()
        if ctx is not None:
            if ctx.store.completed():
                log.emit("restore", "skipped", why="the application completed in its last run")
            elif policy is RestorePolicy.FRESH:
                log.emit("restore", "skipped", why="restore-policy is fresh")
            else:
                from .restorable import NotHere  # noqa: PLC0415 - only when restoring
                from .restore import restore_latest  # noqa: PLC0415 - only when restoring

                mode = self.settings.restore_mode
                restored = restore_latest(
                    ctx,
                    diagnosis=self.settings.diagnosis,
                    mode=mode.value if mode else None,
                    options=self.settings.restore_options,
                )
                if isinstance(restored, NotHere):
                    # Not a failure, whatever the restore policy: this container is meant to
                    # start fresh (restarted inside its pod, or a pod of a new revision).
                    log.emit(
                        "restore",
                        "skipped",
                        cause=restored.cause,
                        generation=restored.generation,
                        why=restored.why,
                    )
                elif restored is not None:
                    self.root = restored.root_pid
                    self.lazy = restored.lazy
                    lineage = restored.manifest.lineage_start
                    if lineage is not None:
                        ctx.lineage_start = lineage
                    return
                elif ctx.store.unrestored():
                    if policy is RestorePolicy.STRICT:
                        raise RestoreFailed("restore-policy is strict and no generation restored")
                    log.emit("restore", "fallback-fresh", why="no generation could be restored")
            from .restore import log_cleanup  # noqa: PLC0415 - restore.py is small

            with ctx.store.lock():
                log_cleanup(ctx.store.cleanup())
                existing = ctx.store.all_generations()
                upto = existing[-1] if existing else None
        self.start_fresh()
        if ctx is not None and upto is not None:
            self._retire_after_fresh_start(ctx, upto)

    def _retire_after_fresh_start(self, ctx: Context, upto: Generation) -> None:
        """The application runs a new lineage now: what came before is history."""
        names = [g.name for g in ctx.store.all_generations() if g.seq <= upto.seq]
        try:
            with ctx.store.lock(timeout=10.0):
                ctx.store.retire(upto, diagnosis=self.settings.diagnosis)
        except StoreError as exc:
            log.emit("retire", "failed", error=str(exc), generations=names)
            return
        log.emit(
            "retire",
            "ok",
            generations=names,
            why="the application started fresh: older checkpoints are history",
            kept_for_diagnosis=self.settings.diagnosis or None,
        )

    def start_fresh(self) -> None:
        timer = Timer()
        user = self.app_user
        floor = self.early_floor.result() if self.early_floor else pids.raise_floor()
        try:
            if user is None and not self.drop_capabilities and not self.isolation.any:
                self.root = os.posix_spawnp(
                    self.argv[0],
                    self.argv,
                    application_env(),
                    file_actions=stdio.spawn_actions(),
                    setsid=True,
                    setsigdef=(*FORWARDED, signal.SIGCHLD, signal.SIGPIPE),
                    setsigmask=(),
                )
            else:
                self.root = self._spawn_forked(user)
        except OSError as exc:
            raise AgentError(f"cannot start {self.argv[0]}: {exc.strerror}") from exc
        log.emit(
            "fresh-start",
            "ok",
            timer.elapsed(),
            pid=self.root,
            argv=self.argv,
            user=None if user is None else [user.uid, user.gid, *user.groups],
            since_agent_start_s=round(time.monotonic() - self.started_at, 4),
            since_process_start_s=process_age(),
            pid_floor=floor.as_dict(),
            isolation=self.isolation.as_log(),
        )

    def _spawn_forked(self, user: AppUser | None) -> int:
        """Start the application by fork + exec (posix_spawn can do none of this): inside
        what `isolation` asks for, without the capabilities the webhook added for the agent
        only, and as the user its container would have run it as (appuser.py).

        In the child, in this order: the IPC namespace and the io_uring filter (they need the
        agent's CAP_SYS_ADMIN: isolation.preexec), then the capabilities leave the bounding
        set and the user's groups, gid and uid are taken (asuser.application_preexec).
        """
        import subprocess  # noqa: PLC0415 - only for applications of another user

        from . import asuser, isolation  # noqa: PLC0415 - ctypes: only when needed

        self.control_opened()  # the child runs Python (preexec): no other thread may run

        streams: list[int | None] = [None, None, None]
        opened: list[int] = []
        terminal = False
        for action in stdio.spawn_actions():
            _, fd, path, flags, _mode = action
            reopened = os.open(path, flags | os.O_NOCTTY)
            terminal = terminal or os.isatty(reopened)
            streams[fd] = reopened
            opened.append(reopened)
        inside = isolation.preexec(self.isolation, terminal=terminal, user=None)
        ids = None if user is None else (user.uid, user.gid, user.groups)
        as_user = asuser.application_preexec(ids, self.drop_capabilities)

        def preexec() -> None:
            inside()
            as_user()

        try:
            process = subprocess.Popen(
                self.argv,
                env=application_env(user),
                stdin=streams[0],
                stdout=streams[1],
                stderr=streams[2],
                close_fds=False,
                start_new_session=True,
                restore_signals=True,
                preexec_fn=preexec,  # noqa: PLW1509 - the PID-floor and control threads are done
            )
        except subprocess.SubprocessError as exc:
            raise AgentError(f"cannot start {self.argv[0]} as its user: {exc}") from exc
        finally:
            for fd in opened:
                os.close(fd)
        # The supervisor reaps every child with waitpid(-1); the Popen object is kept alive
        # so that subprocess never polls (and reaps) the application behind our back.
        self._app_process = process
        return process.pid


class RestoreFailed(AgentError):
    """restore-policy strict: no generation could be restored (exit code 201)."""
