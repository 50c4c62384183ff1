"""The application's standard streams, of any kind, across a dump and a restore.

The container runtime gives the agent (PID 1) its stdin/stdout/stderr, and the agent gives
them to the application. What they are depends on the pod and the runtime:

- a pipe (the runtime's log pipes, `stdin: true`): dumped as `pipe:[ino]`, restored with
  `--inherit-fd fd[N]:pipe:[ino]`;
- a terminal (`tty: true`, `kubectl run -it`): a pty slave whose master is in the runtime,
  not in the application: dumped with `--external tty[rdev:dev]`, restored with
  `--inherit-fd fd[N]:tty[rdev:dev]`;
- a file on a mount the container cannot see (a host log file, the runtime's `/dev/null`):
  dumped with `--external file[mnt_id:ino]` (CRIU says `Can't lookup mount` otherwise),
  restored with `--inherit-fd fd[N]:file[mnt_id:ino]`;
- the container's own `/dev/null` or a file it can see: dumped and reopened by path.

In each case the restored application is put onto *whatever the new container gives the
agent* at the same fd numbers (the dumped identity names what is replaced, the new fd can be
of any kind), so a restore into a container with other streams (a pipe where a terminal was)
still works. A stdin that is the runtime's `/dev/null` is reopened from the container's own
`/dev/null` at a fresh start (one path less through `--external`).

A terminal is also the agent's controlling terminal (runc makes it so for PID 1). The
application must own it, as it would without podckpt (job control, ^C to its foreground
process group, `/dev/tty`): the agent lets go of it (TIOCNOTTY) before the application starts
or is restored, and the application, a session leader, takes it (opening the terminal without
O_NOCTTY at spawn; CRIU restores the session's terminal itself).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import stat
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_DEV_NULL = os.makedev(1, 3)
#: Unix98 pty slaves (/dev/pts/N) have majors 136-143.
_PTS_MAJORS = range(136, 144)
_TIOCNOTTY = 0x5422
_TIOCGSID = 0x5429
#: Identities CRIU can replace with `--inherit-fd` (pipes, sockets, and external resources).
INHERITABLE = ("pipe:", "socket:", "tty[", "file[")


def _fdinfo_mnt_id(pid: int | str, fd: int) -> int | None:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as handle:
            for line in handle:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _visible_mount_ids(pid: int | str = "self") -> set[int]:
    try:
        with open(f"/proc/{pid}/mountinfo") as handle:
            return {int(line.split()[0]) for line in handle if line.strip()}
    except OSError:
        return set()


def is_terminal(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in _PTS_MAJORS


def identity(pid: int | str, fd: int, visible_mounts: set[int] | None = None) -> str | None:
    """What CRIU calls fd `fd` of `pid`: `pipe:[1]`, `socket:[2]`, `tty[88800:1a]`,
    `file[2f:1234]` (a file on a mount the container cannot see), or the path."""
    path = f"/proc/{pid}/fd/{fd}"
    try:
        target = os.readlink(path)
        st = os.stat(path)
    except OSError:
        return None
    if target.startswith(("pipe:", "socket:")):
        return target
    if is_terminal(st):
        return f"tty[{st.st_rdev:x}:{st.st_dev:x}]"
    mnt_id = _fdinfo_mnt_id(pid, fd)
    mounts = _visible_mount_ids() if visible_mounts is None else visible_mounts
    if mnt_id is not None and mounts and mnt_id not in mounts:
        return f"file[{mnt_id:x}:{st.st_ino:x}]"
    return target


def identities(root: int) -> dict[str, str]:
    """The root's fds 0-2 as CRIU names them, for the manifest and `--inherit-fd`."""
    mounts = _visible_mount_ids()
    result = {}
    for fd in (0, 1, 2):
        key = identity(root, fd, mounts)
        if key is not None:
            result[str(fd)] = key
    return result


def dump_externals(stdio: dict[str, str]) -> list[str]:
    """`--external` options for the streams whose other end is not the application's."""
    keys = dict.fromkeys(v for v in stdio.values() if v.startswith(("tty[", "file[")))
    return [f"--external={key}" for key in keys]


def inherit_map(stdio: dict[str, str], base: int) -> dict[int, str]:
    """fd number CRIU gets (`base` + the container's fd) -> the dumped identity it replaces,
    once per identity (stdout first: when stdout and stderr were one pipe, the new stdout
    takes its place)."""
    result: dict[int, str] = {}
    seen: set[str] = set()
    for fd in ("1", "2", "0"):
        key = stdio.get(fd)
        if key and key.startswith(INHERITABLE) and key not in seen:
            seen.add(key)
            result[base + int(fd)] = key
    return result


def unrestorable(stdio: dict[str, str], fds: tuple[int, int, int]) -> str | None:
    """Why the new container's streams cannot take the dumped ones' place, or None.

    A terminal is restored as a terminal: CRIU sets its parameters and makes it the
    session's controlling terminal, which a pipe cannot be (`Can't set tty params`). The pod
    template's `tty` is part of its revision, and a new revision starts fresh anyway, so this
    only happens when a runtime gives another kind of stream for the same spec."""
    for fd, key in sorted(stdio.items()):
        if not key.startswith("tty["):
            continue
        try:
            st = os.fstat(fds[int(fd)])
        except (OSError, IndexError, ValueError):
            return f"it was dumped with a terminal on fd {fd}, and this container has no fd {fd}"
        if not is_terminal(st):
            return (
                f"it was dumped with a terminal on fd {fd} (tty: true), and this container's"
                f" fd {fd} is not a terminal"
            )
    return None


def spawn_actions() -> list[tuple[Any, ...]]:
    """posix_spawn file actions for the application's stdio.

    - the runtime's `/dev/null` (on a host mount the container cannot see) is reopened from
      the container's own `/dev/null`;
    - a terminal is reopened by its path so that the application, a new session leader,
      takes it as its controlling terminal (glibc's posix_spawn runs setsid before the file
      actions; the agent has let go of it before: `release_terminal`)."""
    actions: list[tuple[Any, ...]] = []
    terminal_taken = False
    for fd, flags in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == _DEV_NULL and os.path.exists("/dev/null"):
            actions.append((os.POSIX_SPAWN_OPEN, fd, "/dev/null", flags, 0))
        elif is_terminal(st) and not terminal_taken:
            path = _terminal_path(fd, st)
            if path is not None:
                actions.append((os.POSIX_SPAWN_OPEN, fd, path, os.O_RDWR, 0))
                terminal_taken = True
    return actions


def _terminal_path(fd: int, st: os.stat_result) -> str | None:
    """The terminal's path inside the container, if it is the same device there."""
    try:
        path = os.ttyname(fd)
        there = os.stat(path)
    except OSError:
        return None
    return path if (there.st_rdev, there.st_dev) == (st.st_rdev, st.st_dev) else None


def _session_of_terminal(fd: int) -> int | None:
    try:
        raw = fcntl.ioctl(fd, _TIOCGSID, b"\0\0\0\0")
    except OSError:
        return None
    return int(struct.unpack("i", raw)[0])


def release_terminal() -> bool:
    """Let go of the agent's controlling terminal, so the application can take it.

    Only a session leader that owns a terminal does anything. TIOCNOTTY from a session leader
    sends SIGHUP and SIGCONT to the terminal's foreground process group, which is the agent
    itself here (the application is not started yet): both are ignored for that moment, the
    previous handlers put back after (nothing to inherit: the application does not exist)."""
    if os.getsid(0) != os.getpid():
        return False
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if is_terminal(os.fstat(fd)) and _session_of_terminal(fd) == os.getpid():
                break
    else:
        return False
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGHUP, signal.SIGCONT)}
    try:
        fcntl.ioctl(fd, _TIOCNOTTY)
    except OSError:
        return False
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    return True
