"""What makes the supervisor checkpoint: SIGTERM (within what is left of the grace period,
deadline.py), a request on the control socket, and the periodic interval.

A mixin of `Supervisor` (supervisor.py). A SIGTERM whose dump cannot finish in time, or
fails, is forwarded to the application at once, and the previous generation stays the one to
restore: a failed checkpoint never costs the application its graceful exit.
"""

from __future__ import annotations

import os
import signal
import time

from . import exitcodes, log
from .errors import AgentError
from .lazysupervision import LazySupervision

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from podckpt.api import CheckpointSettings

    from .context import Context
    from .settings import LiveSettings


class CheckpointTriggers(LazySupervision):
    """`checkpoint_now` for requests and the interval; the final dump on SIGTERM."""

    live: LiveSettings
    ctx: Context | None
    keep_generations: bool
    checkpointed: bool
    _sigterm_at: float
    _next_periodic: float | None

    if TYPE_CHECKING:
        # The supervision loop's own (supervisor.py).
        def _forward(self, signum: int) -> None: ...
        def _reap(self) -> None: ...
        def _root_exited(self, status: int) -> None: ...

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


def prepare_dump() -> None:
    """Import what a dump needs while the application runs, not once SIGTERM has come: the
    imports (subprocess, ctypes for the writeback, the dump's modules) cost tens of
    milliseconds that would count against the grace period and the application's downtime."""
    import subprocess  # noqa: F401, PLC0415

    from . import checkpoint, durable  # noqa: F401, PLC0415

    durable.start_writeback(-1, 0, 0)  # loads libc through ctypes; fd -1 does nothing
