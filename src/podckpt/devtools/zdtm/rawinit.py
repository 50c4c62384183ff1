"""PID 1 of a sandbox for the *raw CRIU* side of the zdtm comparison (runs inside the sandbox,
with the root filesystem's python3).

    rawinit.py start WORKDIR [--ipc] ARGV...   start ARGV as the tree to dump, then reap
    rawinit.py wait WORKDIR                    only reap (a tree is restored into the sandbox)

It does for the raw side what the agent does for its own, and nothing CRIU would do: ARGV
runs at PIDs >= 300 (so CRIU, exec'd later into a new sandbox, never takes a PID the tree
needs), as a session leader, with the container's own /dev/null as stdio (no stream to hand
over at restore); `--ipc` starts it in an IPC namespace of its own (what the agent's
`checkpoint-ipc-namespace: private` does). The tree's root PID goes to WORKDIR/.raw-root and,
when the root exits, its status to WORKDIR/.raw-exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time

_FLOOR = 300
_CLONE_NEWIPC = 0x08000000


def _burn_to_floor() -> None:
    while True:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        if pid >= _FLOOR - 1:
            return


def _start(workdir: str, argv: list[str]) -> int:
    ipc = argv[:1] == ["--ipc"]
    argv = argv[1:] if ipc else argv
    _burn_to_floor()
    pid = os.fork()
    if pid == 0:
        try:
            # As a container runtime (and zdtm.py's Popen) starts a program: Python ignores
            # SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec.
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            os.setsid()
            if ipc and ctypes.CDLL(None, use_errno=True).unshare(_CLONE_NEWIPC) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWIPC)")
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.chdir(workdir)
            os.execv(argv[0], argv)  # noqa: S606 - the test program itself, no shell
        finally:
            os._exit(127)
    with open(os.path.join(workdir, ".raw-root"), "w") as out:
        out.write(str(pid))
    return pid


def _reap(workdir: str) -> None:
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            # Nothing to reap yet (a restore may still come). A pause, not a process: every
            # new PID could be one the restored tree needs.
            time.sleep(0.05)
            continue
        root = os.path.join(workdir, ".raw-root")
        with contextlib.suppress(OSError, ValueError), open(root) as handle:
            if int(handle.read()) == pid:
                with open(os.path.join(workdir, ".raw-exit"), "w") as out:
                    out.write(str(os.waitstatus_to_exitcode(status)))


def main() -> None:
    mode, workdir = sys.argv[1], sys.argv[2]
    if mode == "start":
        _start(workdir, sys.argv[3:])
    _reap(workdir)


if __name__ == "__main__":
    main()
