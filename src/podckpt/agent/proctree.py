"""The application's process tree as /proc shows it: members, stop/continue, kill.

The tree is the application's root process and every descendant of it. Processes the agent
itself started (CRIU) are its siblings, never members, so they are never dumped.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Collection
from pathlib import Path

PROC = Path("/proc")


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 = state is index 0)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def parent_of(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def state_of(pid: int) -> str | None:
    fields = stat_fields(pid)
    return fields[0] if fields else None


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]


def members(root: int) -> list[int]:
    """The root and all its descendants, root first (parents before children)."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        ppid = parent_of(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    if not (PROC / str(root)).exists():
        return []
    order = [root]
    index = 0
    while index < len(order):
        order.extend(sorted(children.get(order[index], [])))
        index += 1
    return order


def threads(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(PROC / str(pid) / "task"))
    except OSError:
        return []


def highest_id(pids: list[int]) -> int:
    """The highest PID or TID among `pids` and their threads: CRIU restores each at the same
    number, so a restore must keep the PID counter's own hand-outs clear of it (pids.py)."""
    return max([0, *pids, *(tid for pid in pids for tid in threads(pid))])


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stopped(pids: list[int]) -> list[int]:
    """The processes among `pids` that are stopped by a signal (state `T`): the application
    stopped them itself (SIGSTOP to a child, job control), and they must stay stopped."""
    return [pid for pid in pids if state_of(pid) == "T"]


def continue_tree(root: int, keep_stopped: Collection[int] = ()) -> int:
    """SIGCONT every member (after `criu --leave-stopped`) except those the application had
    stopped itself (CRIU dumps and restores them stopped; waking them would change what the
    application sees: zdtm `static/stopped`). Returns how many were continued."""
    pids = [pid for pid in members(root) if pid not in keep_stopped]
    signal_all(pids, signal.SIGCONT)
    return len(pids)


def restop(stop_signals: dict[int, int]) -> None:
    """Give tasks dumped stopped by another signal than SIGSTOP (SIGTSTP, SIGTTIN, SIGTTOU:
    job control) that signal back. `criu restore --leave-stopped` stops every task with
    SIGSTOP, which is what their parent would then see (zdtm `static/stopped03`); raw CRIU
    stops them with their own. A stopped task cannot be given another stop signal without a
    SIGCONT first (SIGCONT discards pending stop signals), so such a task gets SIGCONT and at
    once its signal: its parent sees one more continue/stop pair, with the right signal."""
    for pid, signo in stop_signals.items():
        if signo and signo != signal.SIGSTOP:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signo)


def kill_tree(root: int) -> None:
    """SIGKILL every member, children first so no orphan is reparented mid-way."""
    signal_all(list(reversed(members(root))), signal.SIGKILL)


def uids(pid: int) -> tuple[int, ...]:
    """Real, effective, saved and filesystem uids of a process."""
    return _ids(pid, "Uid:")


def gids(pid: int) -> tuple[int, ...]:
    """Real, effective, saved and filesystem gids of a process."""
    return _ids(pid, "Gid:")


def _ids(pid: int, field: str) -> tuple[int, ...]:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(field):
                return tuple(int(v) for v in line.split()[1:])
    except OSError:
        pass
    return ()


def fd_target(pid: int, fd: int) -> str | None:
    try:
        return os.readlink(PROC / str(pid) / "fd" / str(fd))
    except OSError:
        return None
