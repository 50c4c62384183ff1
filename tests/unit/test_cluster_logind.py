"""The logind stand-in, driven the way the kubelet (godbus) drives it: SASL EXTERNAL with the
empty initial response, Hello, the InhibitDelayMaxUSec property, a delay inhibitor whose fd
comes over SCM_RIGHTS, AddMatch, then PrepareForShutdown on SIGUSR1 and the lock's release
when the fd is closed. The kubelet itself is exercised by tests/cluster (node stop)."""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podckpt.devtools.cluster import dbuswire as w


def test_wire_format_round_trip() -> None:
    msg = w.Message(
        w.CALL,
        7,
        {
            w.F_PATH: "/org/freedesktop/login1",
            w.F_MEMBER: "Inhibit",
            w.F_INTERFACE: "org.freedesktop.login1.Manager",
            w.F_SIGNATURE: "ssv(ut)a{sv}b",
        },
        ("shutdown", "kubelet", ("t", 2**40), (3, 9), {"k": ("s", "v")}, True),
    )
    data = msg.to_bytes() + b"tail"
    parsed = w.parse(data)
    assert parsed is not None
    back, n = parsed
    assert data[n:] == b"tail"
    assert back.serial == 7
    assert back.fields == msg.fields
    assert back.body == ("shutdown", "kubelet", ("t", 2**40), (3, 9), [("k", ("s", "v"))], 1)
    assert w.parse(data[: n - 1]) is None  # incomplete


def test_split_signature() -> None:
    assert w.split_signature("sa{sv}(ub)h") == ["s", "a{sv}", "(ub)", "h"]


class _Client:
    """Just enough of a D-Bus client (what godbus does for the kubelet)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(10)
        self.buf = b""
        self.fds: list[int] = []
        self.serial = 0

    def line(self, text: bytes) -> bytes:
        self.sock.sendall(text + b"\r\n")
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        out, self.buf = self.buf.split(b"\r\n", 1)
        return out

    def call(self, dest: str, path: str, iface: str, member: str, sig: str = "", *body: Any) -> Any:
        self.serial += 1
        fields: dict[int, Any] = {w.F_PATH: path, w.F_INTERFACE: iface, w.F_MEMBER: member}
        fields[w.F_DESTINATION] = dest
        if sig:
            fields[w.F_SIGNATURE] = sig
        self.sock.sendall(w.Message(w.CALL, self.serial, fields, body).to_bytes())
        reply = self.read()
        assert reply.fields[w.F_REPLY_SERIAL] == self.serial
        return reply

    def read(self) -> w.Message:
        while (parsed := w.parse(self.buf)) is None:
            data, anc, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(16))
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    self.fds.extend(array.array("i", payload))
            self.buf += data
        msg, n = parsed
        self.buf = self.buf[n:]
        return msg


@pytest.fixture
def logind(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    sock, status = tmp_path / "bus.sock", tmp_path / "status.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "podckpt.devtools.cluster.logind", str(sock), str(status), "60"]
    )
    deadline = time.monotonic() + 10
    while not status.exists():
        assert time.monotonic() < deadline, "logind did not start"
        time.sleep(0.02)
    yield proc, sock, status
    proc.terminate()
    proc.wait(10)


def _wait_status(status: Path, check: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        data: dict[str, Any] = json.loads(status.read_text())
        if check(data) or time.monotonic() > deadline:
            return data
        time.sleep(0.02)


def test_the_kubelets_conversation_with_logind(
    logind: tuple[subprocess.Popen[bytes], Path, Path],
) -> None:
    proc, sock, status = logind
    c = _Client(sock)
    c.sock.sendall(b"\0")
    assert c.line(b"AUTH") == b"REJECTED EXTERNAL"
    assert c.line(b"AUTH EXTERNAL") == b"DATA"
    assert c.line(b"DATA").startswith(b"OK ")
    assert c.line(b"NEGOTIATE_UNIX_FD") == b"AGREE_UNIX_FD"
    c.sock.sendall(b"BEGIN\r\n")
    bus, login = "org.freedesktop.DBus", "org.freedesktop.login1"
    hello = c.call(bus, "/org/freedesktop/DBus", bus, "Hello")
    assert hello.body == (":1.1",)
    prop = c.call(
        login, "/org/freedesktop/login1", "org.freedesktop.DBus.Properties", "Get", "ss",
        "org.freedesktop.login1.Manager", "InhibitDelayMaxUSec",
    )  # fmt: skip
    assert prop.body == (("t", 60_000_000),)
    lock = c.call(
        login, "/org/freedesktop/login1", "org.freedesktop.login1.Manager", "Inhibit", "ssss",
        "shutdown", "kubelet", "Kubelet needs time to handle node shutdown", "delay",
    )  # fmt: skip
    assert lock.fields[w.F_SIGNATURE] == "h"
    assert lock.body == (0,)
    assert len(c.fds) == 1
    held = _wait_status(status, lambda s: s["inhibitors"])
    assert held["inhibitors"] == [
        {"what": "shutdown", "who": "kubelet", "why": "Kubelet needs time to handle node shutdown",
         "mode": "delay"},
    ]  # fmt: skip
    match = "type='signal',interface='org.freedesktop.login1.Manager',member='PrepareForShutdown'"
    assert c.call(bus, "/org/freedesktop/DBus", bus, "AddMatch", "s", match).type == w.RETURN
    unknown = c.call(login, "/org/freedesktop/login1", "org.freedesktop.login1.Manager", "PowerOff")
    assert unknown.type == w.ERROR

    os.kill(proc.pid, signal.SIGUSR1)
    announced = c.read()
    assert announced.type == w.SIGNAL
    assert announced.fields[w.F_MEMBER] == "PrepareForShutdown"
    assert announced.body == (1,)
    assert _wait_status(status, lambda s: s["shutdown_announced"])["inhibitors"]
    os.close(c.fds.pop())  # the kubelet is done: it releases the lock
    assert _wait_status(status, lambda s: not s["inhibitors"])["inhibitors"] == []
    c.sock.close()
