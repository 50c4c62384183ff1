"""A Service in front of several replicas, for tests without kube-proxy: TCP, one backend per
connection, chosen at random among the endpoints.

This is what kube-proxy does for a ClusterIP Service (iptables mode picks an endpoint at
random for each new connection; established connections stay where they are). The endpoints
are read from a file, one ``HOST:PORT`` per line, re-read whenever it changes: a test removes a
killed replica the way the EndpointSlice controller does (some time after the pod died, not at
once), and adds it back when the replacement is ready. Until then a new connection may go to
the dead replica and is reset, as an iptables rule to a dead pod IP would leave it; the client
(here the kube-apiserver calling a webhook) sees the call fail. Nothing is retried here.

    python -m podckpt.devtools.service_proxy LISTEN_PORT ENDPOINTS_FILE

Used by the operator fault suite (two webhook replicas behind one URL).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

from podckpt.devtools.cluster.forward import pipe


class Endpoints:
    """The endpoint list of a file, re-read when its modification time changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: int | None = None
        self._items: list[tuple[str, int]] = []

    def current(self) -> list[tuple[str, int]]:
        try:
            stamp = os.stat(self._path).st_mtime_ns
        except OSError:
            return []
        if stamp != self._stamp:
            self._stamp = stamp
            self._items = parse_endpoints(self._path.read_text())
        return list(self._items)


def parse_endpoints(text: str) -> list[tuple[str, int]]:
    """``HOST:PORT`` lines; blank lines and ``#`` comments are skipped."""
    out: list[tuple[str, int]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        host, _, port = line.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"endpoint {line!r}: expected HOST:PORT")
        out.append((host, int(port)))
    return out


def write_endpoints(path: Path, endpoints: list[tuple[str, int]]) -> None:
    """Replace the endpoint list atomically (the proxy may read it at any moment)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{h}:{p}\n" for h, p in endpoints))
    tmp.replace(path)


async def serve(port: int, endpoints: Endpoints, rng: random.Random) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        choices = endpoints.current()
        if not choices:
            writer.close()  # no endpoints: the Service refuses, as kube-proxy's REJECT rule
            return
        host, target = rng.choice(choices)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, target)
        except OSError:
            writer.transport.abort()  # a reset, not a clean close
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", port, reuse_address=True, backlog=256)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[0].isdigit():
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(serve(int(argv[0]), Endpoints(Path(argv[1])), random.Random()))  # noqa: S311 - load spreading, not secrets
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
