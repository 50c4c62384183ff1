"""The supervisor's side of the control socket (control.py): accepting clients, answering a
checkpoint request, dropping clients that stay silent.

A mixin of `Supervisor` (supervisor.py). Every client is a key of the supervision loop's
selector and is served only when its request line is in, so no client can block the loop
(and with it signal forwarding, reaping and the SIGTERM checkpoint).
"""

from __future__ import annotations

import contextlib
import threading
import time

from . import log
from .errors import AgentError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import selectors
    import socket
    from typing import Any

    from podckpt.api import CheckpointSettings

    from . import control
    from .context import Context
    from .settings import LiveSettings


class ControlServer:
    """The control socket as keys of the supervision loop's selector."""

    ctx: Context | None
    container: str
    live: LiveSettings
    control_path: str
    _control: socket.socket | None
    _opening: threading.Thread | None = None
    _clients: dict[int, control.Client]
    _selector: selectors.BaseSelector | None

    if TYPE_CHECKING:
        # The supervision loop's and the checkpoint triggers' (supervisor.py, triggers.py).
        def _reap(self) -> None: ...
        def checkpoint_now(self, reason: str, settings: CheckpointSettings) -> dict[str, Any]: ...

    def open_control_soon(self) -> None:
        """Open the control socket in a thread while the application is started or restored.
        A request made meanwhile, such as a `podckpt-agent checkpoint` during a long restore,
        waits in the socket's backlog and is answered once supervision starts, where it used
        to be told that no agent runs in the container; and the import it takes is off the
        restore's path. `control_opened()` waits for it."""
        self._opening = threading.Thread(
            target=self.open_control, name="podckpt-control", daemon=True
        )
        self._opening.start()

    def control_opened(self) -> None:
        """Wait for `open_control_soon`: before supervising, and before a fork whose child
        runs Python (no other thread may hold a lock the child would need)."""
        if self._opening is not None:
            self._opening.join()
            self._opening = None

    def open_control(self) -> None:
        if self.ctx is None:
            return
        from . import control  # noqa: PLC0415 - after the application started

        try:
            self._control = control.listen(self.control_path)
        except (OSError, AgentError) as exc:
            log.emit("control", "unavailable", path=self.control_path, error=str(exc))

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
