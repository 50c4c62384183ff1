"""A stand-in for systemd-logind, so that a node can be shut down gracefully by its kubelet.

The kubelet's graceful node shutdown talks to logind over the D-Bus system bus: it reads
``InhibitDelayMaxUSec``, takes a "delay" inhibitor lock for "shutdown" (``Inhibit`` returns a
file descriptor), subscribes to ``PrepareForShutdown``, and when that signal says ``true``, it
marks the node not ready, stops its pods within ``shutdownGracePeriod`` (they end Failed,
reason Terminated, condition DisruptionTarget/TerminationByKubelet) and closes the lock. This
machine has neither systemd nor logind, and a node's shutdown must not touch the host's. So
each node runs this process: it *is* that node's bus (a D-Bus peer that answers the bus's own
``Hello``/``AddMatch`` and logind's calls on one socket, which the kubelet is pointed at with
``DBUS_SYSTEM_BUS_ADDRESS``), and `hack/cluster.sh node stop` makes it announce the shutdown:

- SIGUSR1: emit ``PrepareForShutdown(true)``; SIGUSR2: ``PrepareForShutdown(false)``;
- the status file (JSON: connected clients, held inhibitor locks, whether a shutdown was
  announced) is rewritten on every change, so `node stop` knows when the kubelet is done.

Only what the kubelet uses is implemented (`dbuswire` for the messages, the EXTERNAL
authentication of root, Unix fd passing); anything else gets a D-Bus error reply.

    python -m podckpt.devtools.cluster.logind SOCKET STATUS_FILE INHIBIT_DELAY_MAX_SECONDS
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podckpt.devtools.cluster.dbuswire import (
    CALL,
    ERROR,
    F_DESTINATION,
    F_ERROR,
    F_INTERFACE,
    F_MEMBER,
    F_PATH,
    F_REPLY_SERIAL,
    F_SENDER,
    F_SIGNATURE,
    F_UNIX_FDS,
    RETURN,
    SIGNAL,
    Message,
    parse,
)

LOGIND = "org.freedesktop.login1"
MANAGER = "org.freedesktop.login1.Manager"
PATH = "/org/freedesktop/login1"
BUS = "org.freedesktop.DBus"


@dataclass
class _Client:
    sock: socket.socket
    unique_name: str
    authenticated: bool = False
    inbuf: bytes = b""


class Logind:
    """The bus socket, its clients and their inhibitor locks."""

    def __init__(self, sock_path: Path, status: Path, inhibit_delay_max_s: int) -> None:
        self.status_path = status
        self.delay_usec = inhibit_delay_max_s * 1_000_000
        self.guid = uuid.uuid4().hex
        self.serial = 0
        self.clients: dict[int, _Client] = {}
        self.inhibitors: dict[int, dict[str, str]] = {}  # read end of the lock's pipe -> who
        self.shutdown_announced = False
        self.pending: list[bool] = []
        self.next_id = 1
        self.sel = selectors.DefaultSelector()
        sock_path.unlink(missing_ok=True)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(sock_path))
        sock_path.chmod(0o600)
        self.server.listen(8)
        self.sel.register(self.server, selectors.EVENT_READ, "accept")
        self.write_status()

    def write_status(self) -> None:
        status = {
            "pid": os.getpid(),
            "clients": sum(1 for c in self.clients.values() if c.authenticated),
            "inhibitors": list(self.inhibitors.values()),
            "shutdown_announced": self.shutdown_announced,
        }
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        tmp.replace(self.status_path)

    def run(self) -> None:
        stop = False

        def on_signal(signum: int, _frame: object) -> None:
            nonlocal stop
            if signum == signal.SIGUSR1:
                self.pending.append(True)
            elif signum == signal.SIGUSR2:
                self.pending.append(False)
            else:
                stop = True

        for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
            signal.signal(s, on_signal)
        while not stop:
            for key, _ in self.sel.select(timeout=0.2):
                if key.data == "accept":
                    self._accept()
                elif key.data == "lock":
                    self._lock_event(key.fd)
                else:
                    self._readable(key.fd)
            while self.pending:
                self._announce(self.pending.pop(0))

    def _accept(self) -> None:
        conn, _ = self.server.accept()
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        if uid not in (0, os.geteuid()):
            conn.close()
            return
        self.clients[conn.fileno()] = _Client(conn, f":1.{self.next_id}")
        self.next_id += 1
        self.sel.register(conn, selectors.EVENT_READ, "client")

    def _drop(self, fd: int) -> None:
        client = self.clients.pop(fd, None)
        if client is not None:
            self.sel.unregister(client.sock)
            client.sock.close()
            self.write_status()

    def _readable(self, fd: int) -> None:
        client = self.clients[fd]
        try:
            data = client.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        client.inbuf += data
        try:
            if not client.authenticated:
                self._auth(client)
            while client.authenticated and (parsed := parse(client.inbuf)):
                msg, n = parsed
                client.inbuf = client.inbuf[n:]
                if msg.type == CALL:
                    self._call(client, msg)
        except (ValueError, IndexError, struct.error, OSError):
            self._drop(fd)

    def _auth(self, client: _Client) -> None:
        """The SASL line protocol; EXTERNAL only (the peer's uid was checked at accept)."""
        if client.inbuf.startswith(b"\0"):
            client.inbuf = client.inbuf[1:]
        while b"\r\n" in client.inbuf:
            line, client.inbuf = client.inbuf.split(b"\r\n", 1)
            words = line.split()
            cmd = words[0] if words else b""
            if cmd == b"AUTH" and words[1:2] == [b"EXTERNAL"]:
                reply = f"OK {self.guid}" if len(words) > 2 else "DATA"
            elif cmd in {b"AUTH", b"CANCEL"}:
                reply = "REJECTED EXTERNAL"
            elif cmd == b"DATA":
                reply = f"OK {self.guid}"
            elif cmd == b"NEGOTIATE_UNIX_FD":
                reply = "AGREE_UNIX_FD"
            elif cmd == b"BEGIN":
                client.authenticated = True
                self.write_status()
                return
            else:
                reply = "ERROR"
            client.sock.sendall(reply.encode() + b"\r\n")

    def _send(self, client: _Client, msg: Message, fds: tuple[int, ...] = ()) -> None:
        self.serial += 1
        msg.serial = self.serial
        data = msg.to_bytes()
        if fds:
            client.sock.sendmsg(
                [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            )
        else:
            client.sock.sendall(data)

    def _reply(
        self, client: _Client, call: Message, sig: str = "", body: tuple[Any, ...] = ()
    ) -> None:
        fields: dict[int, Any] = {F_REPLY_SERIAL: call.serial, F_DESTINATION: client.unique_name}
        fields[F_SENDER] = BUS if call.fields.get(F_DESTINATION) == BUS else LOGIND
        if sig:
            fields[F_SIGNATURE] = sig
        self._send(client, Message(RETURN, 0, fields, body))

    def _error(self, client: _Client, call: Message, name: str, text: str) -> None:
        fields = {F_REPLY_SERIAL: call.serial, F_DESTINATION: client.unique_name}
        fields |= {F_ERROR: name, F_SIGNATURE: "s"}
        self._send(client, Message(ERROR, 0, fields, (text,)))

    def _call(self, client: _Client, msg: Message) -> None:
        member = msg.fields.get(F_MEMBER, "")
        iface = msg.fields.get(F_INTERFACE, "")
        if iface == BUS or msg.fields.get(F_DESTINATION) == BUS:
            if member == "Hello":
                self._reply(client, msg, "s", (client.unique_name,))
            elif member in ("AddMatch", "RemoveMatch"):
                self._reply(client, msg)
            elif member == "NameHasOwner":
                self._reply(client, msg, "b", (msg.body[:1] == (LOGIND,),))
            elif member == "GetNameOwner" and msg.body[:1] == (LOGIND,):
                self._reply(client, msg, "s", (":1.0",))
            else:
                self._error(client, msg, f"{BUS}.Error.UnknownMethod", f"no {member} here")
        elif iface == "org.freedesktop.DBus.Properties" and member == "Get":
            if msg.body == (MANAGER, "InhibitDelayMaxUSec"):
                self._reply(client, msg, "v", (("t", self.delay_usec),))
            else:
                self._error(client, msg, f"{BUS}.Error.UnknownProperty", f"no {msg.body}")
        elif iface == "org.freedesktop.DBus.Peer" and member == "Ping":
            self._reply(client, msg)
        elif iface == MANAGER and member == "Inhibit" and len(msg.body) == 4:
            what, who, why, mode = msg.body
            read_end, write_end = os.pipe()
            self.inhibitors[read_end] = {"what": what, "who": who, "why": why, "mode": mode}
            self.sel.register(read_end, selectors.EVENT_READ, "lock")
            fields = {F_REPLY_SERIAL: msg.serial, F_DESTINATION: client.unique_name}
            fields |= {F_SENDER: LOGIND, F_SIGNATURE: "h", F_UNIX_FDS: 1}
            self._send(client, Message(RETURN, 0, fields, (0,)), fds=(write_end,))
            os.close(write_end)  # the lock is held as long as the client keeps its copy
            self.write_status()
        else:
            self._error(client, msg, f"{BUS}.Error.UnknownMethod", f"no {iface}.{member} here")

    def _lock_event(self, fd: int) -> None:
        """The read end of a lock's pipe is readable: EOF means every copy of the lock's fd
        was closed, i.e. the inhibitor was released."""
        if os.read(fd, 64):
            return
        self.sel.unregister(fd)
        os.close(fd)
        self.inhibitors.pop(fd, None)
        self.write_status()

    def _announce(self, active: bool) -> None:
        self.shutdown_announced = active
        fields = {F_PATH: PATH, F_INTERFACE: MANAGER, F_MEMBER: "PrepareForShutdown"}
        fields |= {F_SENDER: LOGIND, F_SIGNATURE: "b"}
        for client in list(self.clients.values()):
            if client.authenticated:
                with contextlib.suppress(OSError):
                    self._send(client, Message(SIGNAL, 0, dict(fields), (active,)))
        self.write_status()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    Logind(Path(argv[0]), Path(argv[1]), int(argv[2])).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
