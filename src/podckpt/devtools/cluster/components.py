"""Start, watch and stop the cluster's processes, by PID and only those we started.

Every component runs in its own session (so `hack/cluster.sh up` can return while the cluster
keeps running, and a Ctrl-C in the caller's terminal does not reach it), writes its output to
``<logs>/<name>.log``, and is recorded in the cluster's state file as (pid, start time). The
start time (field 22 of /proc/PID/stat) guards against PID reuse: `down` after a reboot or a
crash never signals an unrelated process that happens to have the same PID.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from podckpt.devtools.cluster.errors import ClusterError, PrerequisiteError


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None  # a zombie is gone for our purposes
    return int(fields[19])


@dataclass
class Process:
    """A started component: enough to find it again from another process (the CLI)."""

    name: str
    pid: int
    start_time: int
    log: str

    def alive(self) -> bool:
        """True while this exact process (same PID *and* start time) runs."""
        return proc_start_time(self.pid) == self.start_time

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; reap it if it is our child."""
        if not self.alive():
            _reap(self.pid)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(self.pid)
            if not self.alive():
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        for _ in range(100):
            _reap(self.pid)
            if not self.alive():
                return
            time.sleep(0.05)

    def wait_dead(self, timeout: float = 5.0) -> bool:
        """Wait (signalling nothing) until the process is gone, reaping it if it is our
        child; True if it is gone."""
        deadline = time.monotonic() + timeout
        while True:
            _reap(self.pid)
            if not self.alive():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the component's log, for error messages."""
        try:
            text = Path(self.log).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _reap(pid: int) -> None:
    """Collect the exit status of our own child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def start(name: str, argv: list[str], logs_dir: Path, env: dict[str, str] | None = None) -> Process:
    """Start ``argv`` detached (own session), output appended to ``<logs_dir>/<name>.log``."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    log = logs_dir / f"{name}.log"
    with log.open("ab") as out:
        out.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
        out.flush()
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                close_fds=True,
            )
        except FileNotFoundError:
            raise PrerequisiteError(
                f"{argv[0]} is missing (needed for {name}); run hack/setup.sh"
            ) from None
    # Popen's object would warn when garbage-collected while running; we track by PID.
    popen.returncode = 0
    st = proc_start_time(popen.pid)
    return Process(name, popen.pid, st if st is not None else -1, str(log))


def wait_until(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    process: Process | None = None,
    interval: float = 0.1,
) -> float:
    """Poll ``check`` until true; fail fast (with the log tail) if ``process`` died.

    Returns the seconds waited, which the benchmarks record.
    """
    started = time.monotonic()
    deadline = started + timeout
    while True:
        with contextlib.suppress(Exception):  # "not ready yet" comes in many shapes
            if check():
                return time.monotonic() - started
        if process is not None and not process.alive():
            _reap(process.pid)
            raise ClusterError(
                f"{process.name} exited while waiting for {what}; log {process.log}:\n"
                f"{process.log_tail()}"
            )
        if time.monotonic() > deadline:
            tail = f"; log {process.log}:\n{process.log_tail()}" if process else ""
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")
        time.sleep(interval)


#: Ports this process handed out: two callers never get the same one before either binds it.
_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free now on `host`, below the kernel's ephemeral range. A port from that
    range (what binding port 0 gives) can be taken as the local port of any outgoing
    connection before the server binds it, or while it restarts on it: a restarted
    controller failed with EADDRINUSE in the operator fault suite, and the API server and
    kubelets are restarted on their ports too."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randrange(max(1024, low - 12000), low)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # any free port, then
        sock.bind((host, 0))
        found: int = sock.getsockname()[1]
        return found


def require_free_port(port: int, what: str, env_var: str) -> int:
    """Fail in one line when a fixed port (one a human asked for) is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PrerequisiteError(
                    f"port {port} for {what} is in use; stop what listens there "
                    f"(`ss -ltnp sport = :{port}`) or set {env_var} to a free port"
                ) from None
            raise
    return port


def http_ok(url: str, *, context: ssl.SSLContext | None = None, expect: str = "") -> bool:
    """GET ``url``; True on HTTP 200 whose body contains ``expect``."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:  # noqa: S310
            body = resp.read().decode(errors="replace")
            return resp.status == 200 and expect in body
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def tcp_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def insecure_context() -> ssl.SSLContext:
    """TLS without verification: only for the health ports of our own components on
    127.0.0.1, which serve throw-away self-signed certificates."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """TLS context that verifies our CA and presents a client certificate."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (VmRSS), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """All descendant PIDs of ``pid`` (children of children...), for RSS accounting."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out
