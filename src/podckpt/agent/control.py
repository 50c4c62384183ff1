"""`podckpt-agent checkpoint`: ask the running agent for a checkpoint, and get its outcome.

The agent listens on an abstract unix socket named after its container
(`@podckpt-agent/<container>`). Abstract sockets need no writable path (distroless images,
read-only root filesystems) and vanish with the agent; they are per network namespace, which
`kubectl exec` shares with the container. One JSON request line, one JSON answer line.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from .errors import AgentError

PREFIX = "podckpt-agent/"


def address(container: str) -> str:
    return "\0" + PREFIX + container


def listen(container: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.bind(address(container))
    sock.listen(4)
    sock.setblocking(False)
    return sock


def running_agents() -> list[str]:
    """Containers whose agent listens in this network namespace (from /proc/net/unix)."""
    names = []
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return []
    for line in lines:
        parts = line.split()
        if len(parts) >= 8 and parts[7].startswith("@" + PREFIX):
            names.append(parts[7][1 + len(PREFIX) :])
    return sorted(set(names))


def read_line(conn: socket.socket, limit: int = 1 << 16) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def request(container: str | None, op: str, timeout: float = 600.0) -> dict[str, Any]:
    """Send one request to the agent of `container` (the only agent when None)."""
    if container is None:
        agents = running_agents()
        if len(agents) != 1:
            raise AgentError(
                "no running podckpt agent found in this network namespace"
                if not agents
                else "several agents run here; name one with --container: " + ", ".join(agents)
            )
        container = agents[0]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(address(container))
            sock.sendall(json.dumps({"op": op}).encode() + b"\n")
            answer = read_line(sock)
        except OSError as exc:
            raise AgentError(f"cannot talk to the agent of container {container}: {exc}") from exc
    try:
        result = json.loads(answer)
    except (ValueError, RecursionError):
        raise AgentError(f"the agent of container {container} gave no answer") from None
    if not isinstance(result, dict):
        raise AgentError(f"the agent of container {container} gave a malformed answer")
    return result


def encode(answer: dict[str, Any]) -> bytes:
    return json.dumps(answer, separators=(",", ":")).encode() + b"\n"


def decode_op(request: bytes) -> str | None:
    try:
        body = json.loads(request)
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, or a nesting bomb
        return None
    op = body.get("op") if isinstance(body, dict) else None
    return op if isinstance(op, str) else None
