"""PID 1 duties: start or restore the application, forward signals, reap zombies, checkpoint
on SIGTERM / on request / periodically, and exit with the application's code.

One thread, one loop: signals arrive through `signal.set_wakeup_fd` (the Python handlers do
nothing; the loop reads signal numbers from the pipe), the control socket is a selector key,
and periodic checkpoints are the loop's timeout. No signal is ever blocked or ignored, because
a blocked mask or SIG_IGN would be inherited by the application across exec.

This module holds the loop, signal forwarding and reaping; the rest of `Supervisor` comes
from mixins, one concern each: starting the application (appstart.py), what triggers a
checkpoint (triggers.py), the control socket (controlserver.py) and a lazy restore's page
transfer (lazysupervision.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from podckpt.api import contract

from . import exitcodes, log
from .appstart import FORWARDED, ApplicationStart
from .controlserver import ControlServer
from .errors import StoreError
from .isolation import Isolation
from .triggers import CheckpointTriggers, prepare_dump

TYPE_CHECKING = False
if TYPE_CHECKING:
    import selectors
    import socket
    from collections.abc import Sequence
    from typing import Any

    from podckpt.api import CheckpointSettings

    from . import control, pids
    from .appuser import AppUser
    from .context import Context
    from .lazy import LazyTransfer
    from .settings import LiveSettings


def _noop(signum: int, frame: Any) -> None:
    """The wakeup fd carries the signal; the Python-level handler has nothing to do."""


class Supervisor(ApplicationStart, CheckpointTriggers, ControlServer):
    """The agent as PID 1: every attribute the mixins declare is set here, once."""

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

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        import selectors  # noqa: PLC0415 - after the application started

        if self.ctx is not None:
            import threading  # noqa: PLC0415

            threading.Thread(target=prepare_dump, name="podckpt-warm-up", daemon=True).start()
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
