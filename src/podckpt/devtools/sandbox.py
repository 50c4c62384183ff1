"""Start a process the way a container runtime does, to test the agent as it really runs.

A sandbox is what runc makes of a Kubernetes container: new mount, PID, IPC, UTS and network
namespaces (loopback up: a new "pod IP" each time), an overlayfs root whose writable layer is
empty on every creation, proc with /proc/sys read-only, a tmpfs /dev, pivot_root, stdin
/dev/null and stdout/stderr as pipes drained by the launcher (as containerd's shim does).
The namespace work happens in `_nsinit`, a separate process, because the launcher is usually
a multi-threaded pytest that must not fork itself.

All mounts live in the sandbox's own mount namespace, so the host never sees them and they
vanish when PID 1 dies; destroy() only has to kill PID 1 and remove the writable layer.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from podckpt.devtools import _linux

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SandboxError(RuntimeError):
    """The sandbox could not be started (the message says which step failed)."""


@dataclass(frozen=True)
class Bind:
    source: Path
    target: str  # absolute path inside the sandbox
    readonly: bool = False


class _Drain:
    """Reads one pipe (or a terminal's master) into a file and a buffer so output survives
    the process."""

    def __init__(self, pipe: IO[bytes], log: Path) -> None:
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._pipe = pipe
        self.log = log
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"drain {log.name}")
        self._thread.start()

    def _run(self) -> None:
        with self.log.open("wb") as out:
            while True:
                try:
                    chunk = os.read(self._pipe.fileno(), 65536)
                except OSError:  # a terminal master reads EIO once the last slave closed
                    break
                if not chunk:
                    break
                with self._lock:
                    self._buf += chunk
                out.write(chunk)
                out.flush()
        self._pipe.close()

    def text(self) -> str:
        with self._lock:
            return self._buf.decode(errors="replace")

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class Sandbox:
    """A running sandbox; `pid` is the host PID of its PID 1."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        pid: int,
        state: Path,
        cfg: dict[str, Any],
        *,
        terminal: IO[bytes] | None = None,
        stdout_file: Path | None = None,
    ) -> None:
        self._proc = proc
        self.pid = pid
        self.state_dir = state
        self._cfg = cfg
        assert proc.stderr is not None
        #: The terminal's master (`tty=True`): PID 1's stdin, stdout and stderr.
        self.terminal = terminal
        self._stdout_file = stdout_file
        out = terminal if terminal is not None else proc.stdout
        self._out = _Drain(out, state / "stdout.log") if out is not None else None
        self._err = _Drain(proc.stderr, state / "stderr.log")
        self._destroyed = False
        self._pidfd = _open_pidfd(pid, proc.pid) if pid else None

    # -- lifecycle -------------------------------------------------------------------------

    def alive(self) -> bool:
        return self._proc.poll() is None

    def signal(self, sig: int) -> None:
        # Through a pidfd: a PID number could be reused once PID 1 is reaped.
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def wait(self, timeout: float) -> int:
        """Exit status of PID 1: its exit code, or 128+signal if a signal killed it."""
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(
                f"sandbox PID 1 ({self.pid}) still running after {timeout}s"
            ) from exc
        return code if code >= 0 else 128 - code

    def stop(self, grace: float = 30.0) -> int:
        """Like the kubelet: SIGTERM, `grace` seconds, then SIGKILL."""
        self.signal(signal.SIGTERM)
        try:
            return self.wait(grace)
        except TimeoutError:
            self.kill()
            return self.wait(30)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def destroy(self) -> None:
        """Kill if alive, let the namespace's mounts go, remove the writable layer."""
        if self._destroyed:
            return
        self._destroyed = True
        try:
            if self.alive():
                self.kill()
                try:
                    self._proc.wait(30)
                except subprocess.TimeoutExpired:
                    self._proc.kill()  # the relay process is ours too
                    self._proc.wait(30)
            if self._out is not None:
                self._out.join(10)
            self._err.join(10)
        finally:
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            _remove_state(self.state_dir)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    # -- inspection ------------------------------------------------------------------------

    def stdout_text(self) -> str:
        """PID 1's stdout (with `tty=True`: everything written to the terminal; with
        `stdout_file`: that file)."""
        if self._stdout_file is not None:
            return self._stdout_file.read_bytes().decode(errors="replace")
        return self._out.text() if self._out is not None else ""

    def type(self, data: bytes) -> None:
        """Keystrokes into the terminal (`tty=True`)."""
        if self.terminal is None:
            raise SandboxError("this sandbox has no terminal")
        os.write(self.terminal.fileno(), data)

    def stderr_text(self) -> str:
        return self._err.text()

    def exec(
        self, argv: Sequence[str], *, timeout: float = 30, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run argv in the sandbox's namespaces and root, restricted like PID 1 (kubectl exec).

        The exit status follows wait()'s convention (128+signal)."""
        if not self.alive():
            raise SandboxError(f"sandbox {self.pid} is not running")
        cfg = {**self._cfg, "pid": self.pid, "argv": list(argv)}
        done = subprocess.run(
            [sys.executable, "-m", "podckpt.devtools._nsinit", "exec", json.dumps(cfg)],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
            env=_helper_env(),
        )
        return subprocess.CompletedProcess(list(argv), done.returncode, done.stdout, done.stderr)


def _open_pidfd(pid: int, relay: int) -> int | None:
    """A pidfd for PID 1, or None if it already exited (then there is nothing to signal)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            ppid = next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
    except (OSError, StopIteration):
        ppid = -1
    if ppid != relay:  # reaped before we looked: the number may belong to someone else now
        os.close(fd)
        return None
    return fd


def _helper_env() -> dict[str, str]:
    # The helper imports podckpt from wherever the launcher found it.
    pkg_root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": pkg_root + (os.pathsep + path if path else "")}


def _remove_state(state: Path) -> None:
    prefix = str(state) + "/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mnt = line.split()[4]
        if mnt == str(state) or mnt.startswith(prefix):
            raise SandboxError(f"refusing to remove {state}: {mnt} is mounted on the host")
    shutil.rmtree(state, ignore_errors=True)


def _cap_list(capabilities: Iterable[str] | None) -> list[int] | None:
    if capabilities is None:
        return None
    wanted = _linux.cap_numbers(list(capabilities))
    with open("/proc/self/status") as f:
        bnd = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    missing = [_linux.CAP_NAMES[c] for c in wanted if not bnd >> c & 1]
    if missing:
        raise SandboxError(f"launcher lacks capabilities {missing} (not in its bounding set)")
    return wanted


def start_sandbox(
    rootfs: Path,
    argv: Sequence[str],
    *,
    binds: Sequence[Bind] = (),
    env: Mapping[str, str] | None = None,
    capabilities: Iterable[str] | None = None,
    seccomp: bool = False,
    no_new_privs: bool = False,
    hostname: str = "sandbox",
    workdir: str = "/",
    tty: bool = False,
    stdout_file: Path | None = None,
    addresses: Sequence[str] = (),
) -> Sandbox:
    """Start argv as PID 1 of a new sandbox on rootfs (read-only lower layer).

    env is added to PATH/HOSTNAME/HOME defaults, as image and pod env are merged.
    capabilities=None keeps the launcher's; otherwise all five sets become exactly these.
    tty=True: PID 1's stdio is a terminal of the sandbox's own devpts (as runc does for
    `tty: true`), its master in `Sandbox.terminal`. stdout_file: PID 1's stdout and stderr
    are that host file (a mount the sandbox cannot see), as some runtimes and harnesses do.
    addresses: IPv4 addresses of the sandbox besides 127.0.0.1 (its "pod IP"), on lo.
    no_new_privs: PID 1 runs with no_new_privs, as `allowPrivilegeEscalation: false` does.
    """
    if os.geteuid() != 0:
        raise SandboxError("sandboxes need root")
    if not argv:
        raise ValueError("argv must not be empty")
    if not workdir.startswith("/") or any(not b.target.startswith("/") for b in binds):
        raise ValueError("workdir and bind targets must be absolute paths")
    rootfs = Path(rootfs).resolve()
    if not rootfs.is_dir():
        raise SandboxError(f"rootfs {rootfs} is not a directory")
    full_env = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname, "HOME": "/root", **(env or {})}
    state = Path(
        tempfile.mkdtemp(prefix="podckpt-sandbox-", dir=os.environ.get("PODCKPT_SANDBOX_DIR"))
    )
    for sub in ("upper", "work", "merged"):
        (state / sub).mkdir()
    (state / "upper").chmod(0o755)
    cfg: dict[str, Any] = {
        "rootfs": str(rootfs),
        "argv": list(argv),
        "env": full_env,
        "binds": [
            {"source": str(Path(b.source).resolve()), "target": b.target, "readonly": b.readonly}
            for b in binds
        ],
        "caps": _cap_list(capabilities),
        "seccomp": seccomp,
        "no_new_privs": no_new_privs,
        "hostname": hostname,
        "addresses": list(addresses),
        "workdir": workdir,
        "state_dir": str(state),
        "launcher_pid": os.getpid(),
    }
    rfd, wfd = os.pipe()
    console, console_peer = socket.socketpair() if tty else (None, None)
    out_file = stdout_file.open("ab") if stdout_file is not None else None
    init_cfg = {**cfg, "status_fd": wfd}
    if console_peer is not None:
        init_cfg["console_fd"] = console_peer.fileno()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "podckpt.devtools._nsinit", "init", json.dumps(init_cfg)],
            stdin=subprocess.DEVNULL,
            # With a terminal PID 1 writes there; the relay's own stdout carries nothing.
            stdout=out_file or (subprocess.DEVNULL if tty else subprocess.PIPE),
            stderr=out_file if out_file is not None else subprocess.PIPE,
            pass_fds=(wfd,) if console_peer is None else (wfd, console_peer.fileno()),
            start_new_session=True,
            env=_helper_env(),
        )
    except BaseException:
        os.close(rfd)
        os.close(wfd)
        for closable in (console, console_peer, out_file):
            if closable is not None:
                closable.close()
        _remove_state(state)
        raise
    os.close(wfd)
    if console_peer is not None:
        console_peer.close()
    if out_file is not None:
        out_file.close()
    with os.fdopen(rfd, "rb") as status:
        report = status.read().decode(errors="replace")  # EOF: PID 1 exec'd or failed
    terminal = None
    if console is not None:
        with console:
            console.settimeout(5)
            try:
                _, fds, _, _ = socket.recv_fds(console, 16, 1)
            except OSError:
                fds = []
        terminal = os.fdopen(fds[0], "rb", buffering=0) if fds else None
    pid = next((int(line[4:]) for line in report.splitlines() if line.startswith("pid ")), 0)
    if out_file is not None:  # stderr went to the file too; a pipe is still drained
        proc.stderr = open(os.devnull, "rb")  # noqa: SIM115 - owned by the Sandbox
    box = Sandbox(proc, pid, state, cfg, terminal=terminal, stdout_file=stdout_file)
    errors = [line for line in report.splitlines() if line.startswith("error: ")]
    if errors or not pid:
        box.destroy()
        detail = errors[0] if errors else f"no PID reported; stderr: {box.stderr_text()[-500:]}"
        raise SandboxError(f"sandbox start failed: {detail}")
    return box


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll predicate() until true or timeout; for tests waiting on sandboxed processes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
