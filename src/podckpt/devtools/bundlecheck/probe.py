"""A minimal CRIU supervisor, run by the bundle's own Python inside a sandbox.

Why it exists: to measure what the bundle's CRIU needs (capabilities, seccomp) in each kind of
root filesystem without depending on the agent's policy, and to prove the bundle's CRIU works
where there is no libc and no shell. It does the three things CRIU-NOTES says a supervisor must
do: start the application at a high PID (so CRIU's own PID in the restoring namespace cannot
collide with it), as a session leader, and restore it detached as a sibling so it becomes our
child again.

usage (inside the sandbox; standard library only):
  probe.py dump    --images DIR --count FILE [--criu-arg ARG]... [--peer] -- APP ARGV...
  probe.py restore --images DIR --count FILE [--criu-arg ARG]...

--peer: the probe listens on a loopback port and echoes what a client sends; "{peer}" in the
application's argv becomes that port. The connection's far end is then outside the dumped tree,
as a pod's clients are.

It prints one JSON line: {"ok": bool, "step": ..., "count": N, "log": "<tail of criu's log>"}
and exits 0 only on success.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

CRIU = os.path.join(os.environ.get("PODCKPT_BUNDLE", "/.podckpt"), "criu", "criu")
_HIGH_PID = 300


def _count(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _wait_count(path: Path, above: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = _count(path)
        if n > above:
            return n
        time.sleep(0.02)
    return _count(path)


def _log_tail(images: Path, name: str) -> str:
    try:
        lines = (images / name).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no {name})"
    errors = [line for line in lines if "Error" in line or "error" in line]
    return "\n".join((errors or lines)[-12:])


def _advance_pids(target: int) -> None:
    """Burn PIDs until the next one is >= target (no /proc/sys write: it is read-only)."""
    while True:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        if pid >= target - 1:
            return


def _criu(args: list[str], images: Path, log: str, extra: list[str]) -> subprocess.Popen[bytes]:
    argv = [CRIU, *args, "--images-dir", str(images), "-o", log, "-v4", *extra]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL)


def _echo_peer() -> int:
    """Listen on a loopback port; echo every connection's bytes back. Returns the port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        while data := conn.recv(4096):
            conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return int(listener.getsockname()[1])


def dump(ns: argparse.Namespace) -> dict[str, object]:
    images, count = Path(ns.images), Path(ns.count)
    images.mkdir(parents=True, exist_ok=True)
    _advance_pids(_HIGH_PID)
    argv = list(ns.app)
    if ns.peer:
        port = str(_echo_peer())
        argv = [a.replace("{peer}", port) for a in argv]
    app = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    n = _wait_count(count, 3, 10)
    if n <= 3:
        return {"ok": False, "step": "start", "count": n, "log": f"app {ns.app} did not count"}
    rc = _criu(["dump", "-t", str(app.pid)], images, "dump.log", ns.criu_arg).wait()
    at_dump = _count(count)
    (images / "count-at-dump").write_text(f"{at_dump}\n")
    ok = rc == 0 and app.wait(10) is not None
    return {"ok": ok, "step": "dump", "rc": rc, "count": at_dump, "pid": app.pid,
            "log": _log_tail(images, "dump.log")}  # fmt: skip


def restore(ns: argparse.Namespace) -> dict[str, object]:
    images, count = Path(ns.images), Path(ns.count)
    at_dump = int((images / "count-at-dump").read_text())
    extra = ["--restore-detached", "--restore-sibling", "--pidfile", str(images / "restored.pid")]
    rc = _criu(["restore"], images, "restore.log", [*extra, *ns.criu_arg]).wait()
    result: dict[str, object] = {
        "step": "restore",
        "rc": rc,
        "log": _log_tail(images, "restore.log"),
    }
    if rc != 0:
        return {**result, "ok": False, "count": _count(count)}
    n = _wait_count(count, at_dump + 3, 10)
    pid = int((images / "restored.pid").read_text())
    # The restored app is our child (--restore-sibling): it continues from at_dump, not from 1.
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return {**result, "ok": n > at_dump + 3, "count": n, "count_at_dump": at_dump, "pid": pid}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="probe.py")
    p.add_argument("step", choices=["dump", "restore"])
    p.add_argument("--images", required=True)
    p.add_argument("--count", required=True)
    p.add_argument("--criu-arg", action="append", default=[])
    p.add_argument("--peer", action="store_true", help="serve a TCP peer for the application")
    p.add_argument("app", nargs="*")
    ns = p.parse_args(argv)
    try:
        result = dump(ns) if ns.step == "dump" else restore(ns)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one JSON line for the caller
        result = {"ok": False, "step": ns.step, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
