"""PID 1 duties: start or restore the application, forward signals, reap zombies, checkpoint
on SIGTERM / on request / periodically, and exit with the application's code.

One thread, one loop: signals arrive through `signal.set_wakeup_fd` (the Python handlers do
nothing; the loop reads signal numbers from the pipe), the control socket is a selector key,
and periodic checkpoints are the loop's timeout. No signal is ever blocked or ignored, because
a blocked mask or SIG_IGN would be inherited by the application across exec.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from podckpt.api import RestorePolicy, contract

from . import exitcodes, log, pids, stdio
from .errors import AgentError, StoreError
from .isolation import Isolation
from .lazysupervision import LazySupervision
from .log import Timer

TYPE_CHECKING = False
if TYPE_CHECKING:
    import selectors
    import socket
    from collections.abc import Sequence
    from typing import Any

    from podckpt.api import CheckpointSettings

    from . import control
    from .appuser import AppUser
    from .context import Context
    from .lazy import LazyTransfer
    from .settings import LiveSettings
    from .store import Generation

#: Forwarded to the application as they come. SIGCHLD is ours; SIGKILL/SIGSTOP cannot be
#: caught; synchronous faults (SIGSEGV...) and terminal job control signals are not forwarded,
#: as tini does.
FORWARDED = tuple(
    getattr(signal, name)
    for name in (
        "SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGTERM",
        "SIGCONT", "SIGWINCH", "SIGPWR", "SIGURG", "SIGVTALRM", "SIGPROF", "SIGIO",
    )
    if hasattr(signal, name)
)  # fmt: skip
_PR_SET_CHILD_SUBREAPER = 36


def _noop(signum: int, frame: Any) -> None:
    """The wakeup fd carries the signal; the Python-level handler has nothing to do."""


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


class Supervisor(LazySupervision):
    def __init__(  # noqa: PLR0917 - one call site, every argument named there
        self,
        argv: Sequence[str],
        live: LiveSettings,
        settings: CheckpointSettings,
        ctx: Context | None,
        container: str,
        started_at: float,
    ) -> None:
        self.argv = list(argv)
        self.live = live
        self.settings = settings
        self.ctx = ctx
        self.container = container
        self.started_at = started_at
        self.root: int | None = None
        self.exit_code: int | None = None
        #: The last SIGTERM's dump failed: the previous generation stays restorable, and the
        #: agent exits CHECKPOINT_FAILED once the application has stopped.
        self.keep_generations = False
        self.checkpointed = False
        self._wake_r, self._wake_w = os.pipe()
        self._control: socket.socket | None = None
        self._clients: dict[int, control.Client] = {}
        self._selector: selectors.BaseSelector | None = None
        #: subprocess.Popen of an application started by fork + exec (see _spawn_forked).
        self._app_process: Any = None
        self._next_periodic: float | None = None
        #: Started by the CLI when a fresh start is certain (no checkpoint to restore).
        self.early_floor: pids.EarlyFloor | None = None
        #: time.monotonic() when the last SIGTERM was read: the grace period runs from there.
        self._sigterm_at = 0.0
        #: A lazy restore's page transfer until its last page is in (lazy.py).
        self.lazy: LazyTransfer | None = None
        #: What the application is started inside of (own IPC namespace, io_uring filter).
        self.isolation = Isolation()
        #: Who the application runs as (None: as the agent) and which capabilities it must
        #: not hold (numbers), from the agent's command line (appuser.py).
        self.app_user: AppUser | None = None
        self.drop_capabilities: tuple[int, ...] = ()
        #: The control socket's path (control.py).
        self.control_path: str = contract.CONTROL_SOCKET

    # -- set-up ----------------------------------------------------------------------------

    def install_signals(self) -> None:
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (*FORWARDED, signal.SIGCHLD):
            signal.signal(sig, _noop)

    def open_control(self) -> None:
        if self.ctx is None:
            return
        from . import control  # noqa: PLC0415 - after the application started

        try:
            self._control = control.listen(self.control_path)
        except (OSError, AgentError) as exc:
            log.emit("control", "unavailable", path=self.control_path, error=str(exc))

    # -- start -----------------------------------------------------------------------------

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
                from .restore import NotHere, restore_latest  # noqa: PLC0415 - only when restoring

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
                preexec_fn=preexec,  # noqa: PLW1509 - the PID-floor thread is done by now
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

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        import selectors  # noqa: PLC0415 - after the application started

        if self.ctx is not None:
            import threading  # noqa: PLC0415

            threading.Thread(target=_prepare_dump, name="podckpt-warm-up", daemon=True).start()
        sel = selectors.DefaultSelector()
        self._selector = sel
        sel.register(self._wake_r, selectors.EVENT_READ, "signals")
        if self._control is not None:
            sel.register(self._control, selectors.EVENT_READ, "control")
        self._schedule_periodic()
        watched: int | None = None
        while (code := self.exit_code) is None:
            watched = self._watch_lazy(sel, watched)
            deadlines = [c.deadline for c in self._clients.values()]
            if self._next_periodic is not None:
                deadlines.append(self._next_periodic)
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for key, _ in sel.select(self._lazy_timeout(timeout)):
                if key.data == "signals":
                    self._drain_signals()
                elif key.data == "control":
                    self._accept_control()
                elif key.data == "lazy":
                    self._lazy_event()
                else:
                    self._serve_client(key.data)
                if self.finished():
                    break
            self._drop_silent_clients()
            if self.lazy is not None and time.monotonic() >= self.lazy.next_check:
                self._lazy_event()
            if (
                not self.finished()
                and self._next_periodic is not None
                and time.monotonic() >= self._next_periodic
            ):
                self._periodic()
        return code

    def finished(self) -> bool:
        return self.exit_code is not None

    def _drain_signals(self) -> None:
        try:
            data = os.read(self._wake_r, 4096)
        except BlockingIOError:
            return
        for signum in data:
            if signum == signal.SIGCHLD:
                self._reap()
            elif signum == signal.SIGTERM:
                self._sigterm_at = time.monotonic()
                self._on_sigterm()
            else:
                self._forward(signum)
            if self.exit_code is not None:
                return
        self._reap()

    def _forward(self, signum: int) -> None:
        if self.root is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.root, signum)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.lazy is not None and pid == self.lazy.pid:
                self.lazy.exited(status)
                self._lazy_event()
                continue
            if pid == self.root:
                self._root_exited(status)
                return

    def _root_exited(self, status: int) -> None:
        code = exitcodes.from_wait_status(status)
        if self.lazy is not None and not self._lazy_exit_sound():
            return  # it ran on a bad restore: restored again (older generation, or fresh)
        if self.checkpointed:
            self.exit_code = exitcodes.CHECKPOINTED
            log.emit("exit", "checkpointed", code=self.exit_code)
            return
        if self.keep_generations:
            # SIGTERM and no checkpoint: neither a completion (a Job must not count it) nor
            # the application's own failure; its code goes with the line.
            self.exit_code = exitcodes.CHECKPOINT_FAILED
            log.emit("exit", "not-checkpointed", code=self.exit_code, app_code=code)
            return
        self.exit_code = code
        completed = False
        if self.ctx is not None:
            try:
                self.ctx.store.mark_completed(diagnosis=self.settings.diagnosis)
                completed = True
            except StoreError as exc:
                log.emit("completed", "failed", error=str(exc))
        log.emit("exit", "application-exited", code=code, store_completed=completed)

    # -- checkpoints -----------------------------------------------------------------------

    def _on_sigterm(self) -> None:
        if self.root is None:
            return
        settings = self.live.current()
        if self.ctx is None or not settings.mode:
            log.emit(
                "sigterm",
                "forwarded",
                checkpoint_mode=settings.mode,
                why="checkpointing is off" if self.ctx else "no --store",
            )
            self._forward(signal.SIGTERM)
            return
        if self._finish_lazy() != "ok":
            # The lazy restore failed while the pod was being deleted: nothing to dump; the
            # generation stays (LAZY-FAILED) for the next pod's full restore.
            self.keep_generations = True
            self.exit_code = exitcodes.CHECKPOINT_FAILED
            log.emit("exit", "not-checkpointed", code=self.exit_code, why="lazy restore failed")
            return
        from . import checkpoint  # noqa: PLC0415 - not needed before the application starts

        decision = checkpoint.deadline_decision(self.ctx, self.root, self._sigterm_at)
        if decision is not None and not decision.fits:
            self.keep_generations = True
            log.emit(
                "dump",
                "skipped",
                reason="sigterm",
                why="the dump cannot finish in what is left of the grace period",
                then="SIGTERM forwarded",
                **decision.as_dict(),
            )
            self._forward(signal.SIGTERM)
            return
        try:
            outcome = checkpoint.dump(self.ctx, self.root, settings, final=True, reason="sigterm")
        except AgentError as exc:
            self.keep_generations = True
            log.emit("dump", "failed", reason="sigterm", error=str(exc), then="SIGTERM forwarded")
            self._forward(signal.SIGTERM)
            return
        self.checkpointed = True
        log.emit("sigterm", "checkpointed", outcome.duration_s, generation=outcome.generation)
        self._reap()
        if self.exit_code is None:
            # The root is dead (SIGKILL); wait for it without blocking on other children.
            _, status = os.waitpid(self.root, 0)
            self._root_exited(status)

    def checkpoint_now(self, reason: str, settings: CheckpointSettings) -> dict[str, Any]:
        if self.ctx is None or self.root is None:
            return {"ok": False, "error": "the agent has no checkpoint store (--store)"}
        lazy = self._finish_lazy()
        if lazy != "ok":
            self._restart(lazy == "again")
            return {"ok": False, "error": "the lazy restore failed; the application restarts"}
        from . import checkpoint  # noqa: PLC0415 - not needed before the application starts

        try:
            outcome = checkpoint.dump(self.ctx, self.root, settings, final=False, reason=reason)
        except AgentError as exc:
            log.emit("dump", "failed", reason=reason, error=str(exc))
            return {"ok": False, "error": str(exc)}
        return {
            "ok": True,
            "generation": outcome.generation,
            "duration_s": round(outcome.duration_s, 4),
            "bytes": outcome.bytes,
            "criu": outcome.stats,
        }

    # -- the control socket (control.py): never blocks the loop ---------------------------

    def _accept_control(self) -> None:
        import selectors  # noqa: PLC0415 - after the application started

        from . import control  # noqa: PLC0415 - after the application started

        assert self._control is not None
        client, refused = control.accept(self._control, len(self._clients))
        if refused is not None:
            log.emit("control", "refused", why=refused)
        if client is not None:
            assert self._selector is not None
            self._clients[client.conn.fileno()] = client
            self._selector.register(client.conn, selectors.EVENT_READ, client)

    def _close_client(self, client: control.Client) -> None:
        self._clients.pop(client.conn.fileno(), None)
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(client.conn)
        client.close()

    def _drop_silent_clients(self) -> None:
        now = time.monotonic()
        for client in [c for c in self._clients.values() if c.deadline <= now]:
            log.emit("control", "dropped", why="no request within the client timeout")
            self._close_client(client)

    def _serve_client(self, client: control.Client) -> None:
        from . import control  # noqa: PLC0415 - after the application started

        line = client.receive()
        if line is None:
            return
        try:
            if not line:
                return
            body = control.decode(line)
            wanted = body.get("container")
            if wanted is not None and wanted != self.container:
                answer = {
                    "ok": False,
                    "error": f"this is the agent of container {self.container}, not {wanted}",
                }
            elif body.get("op") == "checkpoint":
                answer = self.checkpoint_now("request", self.live.current())
            else:
                answer = {"ok": False, "error": "unknown request"}
            client.answer(answer)
        finally:
            self._close_client(client)
            self._reap()

    def _schedule_periodic(self) -> None:
        interval = self.settings.interval
        self._next_periodic = (
            None if interval is None or self.ctx is None else (time.monotonic() + interval)
        )

    def _periodic(self) -> None:
        settings = self.live.current()
        self.settings = settings
        if settings.mode and self.root is not None:
            self.checkpoint_now("periodic", settings)
        self._schedule_periodic()
        self._reap()


def _prepare_dump() -> None:
    """Import what a dump needs while the application runs, not once SIGTERM has come: the
    imports (subprocess, ctypes for the writeback, the dump's modules) cost tens of
    milliseconds that would count against the grace period and the application's downtime."""
    import subprocess  # noqa: F401, PLC0415

    from . import checkpoint, durable  # noqa: F401, PLC0415

    durable.start_writeback(-1, 0, 0)  # loads libc through ctypes; fd -1 does nothing


class RestoreFailed(AgentError):
    """restore-policy strict: no generation could be restored (exit code 201)."""
