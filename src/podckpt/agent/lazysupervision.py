"""The supervisor's side of a lazy restore (lazy.py): watching the page transfer from the
supervision loop, acting when it ends, and waiting for it before a dump.

A mixin of `Supervisor` (supervisor.py), kept apart so that the supervision loop stays small.
"""

from __future__ import annotations

import contextlib
import time

from . import exitcodes, log
from .errors import AgentError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from podckpt.api import CheckpointSettings

    from .lazy import LazyTransfer

#: How long a SIGTERM or a checkpoint waits for a lazy restore's last page.
LAZY_WAIT_S = 120.0


class LazySupervision:
    lazy: LazyTransfer | None
    root: int | None
    settings: CheckpointSettings
    exit_code: int | None

    def start(self) -> None:  # pragma: no cover - ApplicationStart.start (appstart.py)
        raise NotImplementedError

    def _lazy_timeout(self, timeout: float | None) -> float | None:
        """The loop's select timeout, shortened to the transfer's next check."""
        if self.lazy is None:
            return timeout
        wait = max(0.0, self.lazy.next_check - time.monotonic())
        return wait if timeout is None else min(timeout, wait)

    def _watch_lazy(self, sel: Any, watched: int | None) -> int | None:
        """Keep the selector on the current lazy transfer's wake-up pipe."""
        wanted = self.lazy.wake_r if self.lazy is not None else None
        if watched != wanted:
            if watched is not None:
                with contextlib.suppress(KeyError, ValueError):
                    sel.unregister(watched)
            if wanted is not None:
                import selectors  # noqa: PLC0415

                sel.register(wanted, selectors.EVENT_READ, "lazy")
        return wanted

    def _lazy_event(self) -> None:
        transfer = self.lazy
        if transfer is None:
            return
        outcome = transfer.poll()
        if outcome == "running":
            return
        self.lazy = None
        if outcome == "done":
            transfer.step(self.root, diagnosis=self.settings.diagnosis)
            return
        again = transfer.fail(self.root, outcome)
        self.root = None
        self._restart(again)

    def _restart(self, again: bool) -> None:
        """After a failed lazy restore (the application was killed): restore again, in full
        or from an older generation, or start fresh; or, when this container cannot restore
        again, exit so that the next container does."""
        if not again:
            log.emit("exit", "restart-to-restore", code=exitcodes.RESTORE_FAILURE)
            self.exit_code = exitcodes.RESTORE_FAILURE
            return
        try:
            self.start()
        except AgentError as exc:
            log.emit("start", "failed", error=str(exc), exit_code=exitcodes.RESTORE_FAILURE)
            self.exit_code = exitcodes.RESTORE_FAILURE

    def _lazy_exit_sound(self) -> bool:
        """The application exited during a lazy restore: was its memory sound? The checksums
        finish first; when they fail, the exit was a consequence of the bad image, not the
        application's own end: the restore counts as failed and starts again."""
        assert self.lazy is not None
        transfer, self.lazy = self.lazy, None
        outcome = transfer.wait(LAZY_WAIT_S)
        if outcome.startswith("page image "):
            self.root = None
            self._restart(transfer.fail(None, outcome))
            return False
        if outcome == "done":
            transfer.step(None, diagnosis=self.settings.diagnosis)
        else:
            transfer.abort()  # the daemon lost its tasks: not a failure of what they read
        return True

    def _finish_lazy(self) -> str:
        """Before a dump every page must be in: wait for the transfer. 'ok'; or, when it
        failed (the application is gone then), 'again' when this container can restore
        again, 'exit' when it cannot."""
        transfer = self.lazy
        if transfer is None:
            return "ok"
        outcome = transfer.wait(LAZY_WAIT_S)
        self.lazy = None
        if outcome == "done":
            transfer.step(self.root, diagnosis=self.settings.diagnosis)
            return "ok"
        again = transfer.fail(self.root, outcome)
        self.root = None
        return "again" if again else "exit"
