"""The agent's control socket: `podckpt-agent checkpoint` asks the running agent for a
checkpoint and gets its outcome. One JSON request line, one JSON answer line.

Who may ask: only a process of the agent's own container, as root there (what `kubectl exec`
runs as in a checkpointed container). Two fences:

- **where**: a unix socket file in the agent's run directory (`contract.RUN_MOUNT`), a
  per-container subPath of an emptyDir that no other container mounts; the directory is 0700
  root and the socket 0600. An abstract socket (the earlier design) is reachable from every
  container of the pod's network namespace and, for `hostNetwork` pods, from the whole node,
  and any of them could take its name before the agent starts;
- **who**: the peer's credentials (SO_PEERCRED): its uid must be the agent's (root), and it
  must be in the agent's PID and mount namespaces (`/proc/<pid>/ns/{pid,mnt}`); a process of
  another container or of the node is refused, whatever reached the socket.

A client must send its request within `CLIENT_TIMEOUT` seconds; the supervisor's loop serves
clients without blocking (`Clients`), so a silent client never stalls signal handling.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import struct
import time
from pathlib import Path
from typing import Any

from podckpt.api import contract

from .errors import AgentError

#: Seconds a client has to send its request line.
CLIENT_TIMEOUT = 2.0
#: Clients served at once; more are refused at once.
MAX_CLIENTS = 8
MAX_REQUEST = 4096


def socket_path(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get(contract.Env.CONTROL_SOCKET) or contract.CONTROL_SOCKET


def _private_directory(directory: Path) -> None:
    """`directory` exists, is a real directory owned by us, and is 0700."""
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700, parents=True)
    st = directory.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise AgentError(f"control socket directory {directory} is not a directory")
    if st.st_uid != os.geteuid():
        raise AgentError(f"control socket directory {directory} is owned by uid {st.st_uid}")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(directory, 0o700)


def listen(path: str) -> socket.socket:
    """The listening socket at `path` (a stale one from a previous container is replaced)."""
    target = Path(path)
    _private_directory(target.parent)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(target.lstat().st_mode):
            raise AgentError(f"control socket path {path} exists and is not a socket")
        target.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(MAX_CLIENTS)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer; pid 0 when it lives in a PID namespace we cannot see."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _namespace(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def refusal(conn: socket.socket) -> str | None:
    """Why this peer may not talk to the agent, or None if it may."""
    pid, uid, _gid = peer_credentials(conn)
    if uid != os.geteuid():
        return f"uid {uid} may not control the agent (only uid {os.geteuid()} of its container)"
    if pid <= 0:
        return "the peer is not in the agent's PID namespace"
    try:
        for kind in ("pid", "mnt"):
            if _namespace(pid, kind) != _namespace("self", kind):
                return f"the peer (pid {pid}) is not in the agent's {kind} namespace"
    except OSError:
        return f"the peer (pid {pid}) cannot be checked"
    return None


def read_line(conn: socket.socket, limit: int = 1 << 16) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def request(
    op: str, timeout: float = 600.0, *, path: str | None = None, container: str | None = None
) -> dict[str, Any]:
    """Send one request to the agent of this container. With `container`, the agent must be
    that container's (a check that `kubectl exec -c` picked the right one)."""
    where = path or socket_path()
    body: dict[str, Any] = {"op": op}
    if container is not None:
        body["container"] = container
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(where)
            sock.sendall(json.dumps(body).encode() + b"\n")
            answer = read_line(sock)
        except OSError as exc:
            hint = ""
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
                hint = " (no podckpt agent runs in this container)"
            raise AgentError(f"cannot talk to the agent at {where}: {exc}{hint}") from exc
    try:
        result = json.loads(answer)
    except (ValueError, RecursionError):
        raise AgentError(f"the agent at {where} gave no answer") from None
    if not isinstance(result, dict):
        raise AgentError(f"the agent at {where} gave a malformed answer")
    return result


def encode(answer: dict[str, Any]) -> bytes:
    return json.dumps(answer, separators=(",", ":")).encode() + b"\n"


def decode(request: bytes) -> dict[str, Any]:
    try:
        body = json.loads(request)
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, or a nesting bomb
        return {}
    return body if isinstance(body, dict) else {}


def decode_op(request: bytes) -> str | None:
    op = decode(request).get("op")
    return op if isinstance(op, str) else None


class Client:
    """One accepted connection, read without blocking until its line or its deadline."""

    def __init__(self, conn: socket.socket, now: float) -> None:
        self.conn = conn
        self.deadline = now + CLIENT_TIMEOUT
        self.buffer = b""

    def receive(self) -> bytes | None:
        """The request line once complete; b"" when the client is gone or too chatty."""
        try:
            chunk = self.conn.recv(MAX_REQUEST)
        except BlockingIOError:
            return None
        except OSError:
            return b""
        if not chunk:
            return b""
        self.buffer += chunk
        if b"\n" in self.buffer:
            return self.buffer.partition(b"\n")[0]
        if len(self.buffer) > MAX_REQUEST:
            return b""
        return None

    def answer(self, reply: dict[str, Any]) -> None:
        """Best effort, never blocking: a client that does not read loses its answer."""
        with contextlib.suppress(OSError):
            self.conn.send(encode(reply))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()


def accept(listener: socket.socket, clients: int) -> tuple[Client | None, str | None]:
    """Accept one connection: (client, None), or (None, why it was refused)."""
    try:
        conn, _ = listener.accept()
    except OSError:
        return None, None
    conn.setblocking(False)
    why = refusal(conn)
    if why is None and clients >= MAX_CLIENTS:
        why = f"more than {MAX_CLIENTS} clients at once"
    if why is not None:
        with contextlib.suppress(OSError):
            conn.send(encode({"ok": False, "error": why}))
        conn.close()
        return None, why
    return Client(conn, time.monotonic()), None
