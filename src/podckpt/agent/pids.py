"""Keeping the application's PIDs out of the range the agent and CRIU use.

CRIU restores every task at its old PID. In the new container the agent is PID 1 and CRIU and
its helpers take the next free PIDs, so a tree that started right after the agent (PIDs 2, 3,
...) collides with CRIU itself (`Can't fork for 2: File exists`). The agent therefore starts
the application only once the PID counter of its namespace is above PID_FLOOR, and moves it
there again after a restore before the restored tree may run (it is restored stopped).

300 is the kernel's RESERVED_PIDS: after the counter wraps at pid_max the kernel itself hands out
PIDs from 300 on, so every PID the application ever gets is >= 300, while the agent, CRIU and
its helpers live below it.

How: write `ns_last_pid` when /proc/sys is writable (one write); otherwise - the case in every
runc container, where /proc/sys is read-only - burn PIDs: each posix_spawn of a path that does
not exist allocates a PID and fails at once (a vfork, no page tables copied). Measured here:
~0.17 ms per PID, ~50 ms for 300; os.fork of the agent costs ~8 ms each, threads ~0.3 ms;
clone3 `set_tid` puts one task at a chosen PID but does not move the counter, so the
application's children and threads would still get low PIDs (measured: docs/agent.md).

Before a restore the counter goes above the dumped tree's highest PID or TID when the manifest
records it (`highest_pid`; older generations lack it) and that is near (`clearing_floor`):
CRIU, its helpers and the agent's threads then take numbers above the tree's, and nothing is
left to burn between CRIU's exit and the tree running again. The CLI starts that burn beside
the agent's imports, from LATEST's manifest read unverified (a hint of how far, no more: the
restore checks the verified manifest again). Measured (docs/benchmarks.md "Agent"): the burn
after a lazy restore of 2 GiB took 30-270 ms while the page daemon filled memory on the other
core. Without the field or when it is far, the counter stays at PRE_RESTORE_FLOOR and is moved
to PID_FLOOR after the restore, as before.

From the bundle the burning is done by `$PODCKPT_BUNDLE/bin/podckpt-pidfloor FLOOR` (vfork in
C, ~0.05 ms per PID): started before the agent imports itself, it runs on the other core without
the GIL, and the agent only waits for it just before starting the application.
"""

from __future__ import annotations

import os
import threading
import time

PID_FLOOR = 300
#: Before a restore the counter may already go this far, beside the agent's own start-up: the
#: application's PIDs are all >= PID_FLOOR, and CRIU, its helpers and the agent's threads need
#: far fewer than the 100 PIDs left below it. The burn after the restore is then a third.
PRE_RESTORE_FLOOR = 200
#: A restore burns at most this many PIDs beyond PID_FLOOR to clear the tree's range first
#: (~50 ms with the bundle's helper, beside the imports); a tree beyond it is cleared after.
MAX_CLEAR = 1000
NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"
_NO_SUCH_PROGRAM = "/nonexistent/podckpt-pid-burner"
_MAX_BURN = 100_000
#: `podckpt.api.contract.Env.BUNDLE`, spelled here because this module is imported before
#: anything else (the key API included) on the fresh-start path; a unit test checks they agree.
BUNDLE_ENV = "PODCKPT_BUNDLE"


class FloorResult:
    """What raise_floor did. A plain class: this module is imported before anything else, so
    it avoids dataclasses (and the inspect module it pulls in)."""

    __slots__ = ("burned", "duration_s", "last_pid", "method")

    def __init__(self, method: str, last_pid: int, burned: int, duration_s: float) -> None:
        self.method = method  # "already", "ns_last_pid", "burn"
        self.last_pid = last_pid
        self.burned = burned
        self.duration_s = duration_s

    def as_dict(self) -> dict[str, object]:
        return {
            "method": self.method,
            "last_pid": self.last_pid,
            "burned": self.burned,
            "s": round(self.duration_s, 4),
        }


def clearing_floor(highest: object) -> int | None:
    """The floor above a dumped tree whose highest PID or TID is `highest`, when that is known
    and near (MAX_CLEAR); None otherwise (then PRE_RESTORE_FLOOR, and PID_FLOOR after)."""
    if type(highest) is not int or not PID_FLOOR <= highest < PID_FLOOR + MAX_CLEAR:
        return None
    return highest + 1


def last_pid() -> int:
    """The last PID handed out in this PID namespace."""
    try:
        with open(NS_LAST_PID) as handle:
            return int(handle.read())
    except (OSError, ValueError):
        # No readable ns_last_pid: a thread's TID is the next PID the namespace hands out.
        thread = threading.Thread(target=lambda: None)
        thread.start()
        thread.join()
        return thread.native_id or 0


def _burn_one() -> None:
    try:
        pid = os.posix_spawn(_NO_SUCH_PROGRAM, [_NO_SUCH_PROGRAM], {})
    except OSError:
        return  # the expected outcome: glibc already reaped the failed child
    os.waitpid(pid, 0)  # a libc that reports exec failure as a child exit code


def helper_path() -> str | None:
    """The bundle's C PID burner, when the agent runs from its bundle."""
    bundle = os.environ.get(BUNDLE_ENV)
    if not bundle:
        return None
    path = os.path.join(bundle, "bin", "podckpt-pidfloor")
    return path if os.access(path, os.X_OK) else None


def _try_ns_last_pid(floor: int, start: float) -> FloorResult | None:
    current = last_pid()
    if current >= floor - 1:
        return FloorResult("already", current, 0, time.monotonic() - start)
    try:
        with open(NS_LAST_PID, "w") as handle:
            handle.write(str(floor - 1))
        return FloorResult("ns_last_pid", last_pid(), 0, time.monotonic() - start)
    except OSError:
        return None  # read-only /proc/sys, as in every runc container


def raise_floor(floor: int = PID_FLOOR, *, use_helper: bool = True) -> FloorResult:
    """Make sure the next PID this namespace hands out is >= floor."""
    start = time.monotonic()
    done = _try_ns_last_pid(floor, start)
    if done is not None:
        return done
    helper = helper_path() if use_helper else None
    if helper is not None:
        return HelperFloor(helper, floor, start).result()
    current = last_pid()
    burned = 0
    while current < floor - 1 and burned < _MAX_BURN:
        for _ in range(floor - 1 - current):
            _burn_one()
            burned += 1
        current = last_pid()
    return FloorResult("burn", current, burned, time.monotonic() - start)


class BackgroundFloor:
    """raise_floor() in a thread, overlapped with the agent's own start-up (imports, settings,
    CRIU's version check), which otherwise comes on top of it. To PID_FLOOR only for a fresh
    start: before a restore the counter must stay below the application's PIDs, or CRIU itself
    would take them (PRE_RESTORE_FLOOR leaves room for CRIU), or go above all of them
    (`clearing_floor`)."""

    #: Started for a restore: it must be done before CRIU runs (runner.py, restore.py).
    pre_restore = False

    def __init__(self, floor: int = PID_FLOOR) -> None:
        self.floor = floor
        self._result: FloorResult | None = None
        self._thread = threading.Thread(
            target=self._run, args=(floor,), name="pid-floor", daemon=True
        )
        self._thread.start()

    def _run(self, floor: int) -> None:
        self._result = raise_floor(floor)

    def result(self) -> FloorResult:
        self._thread.join()
        # The thread can only miss the floor if it died; finish the job here then.
        return self._result if self._result is not None else raise_floor(self.floor)


class HelperFloor:
    """`podckpt-pidfloor FLOOR` running beside the agent: no GIL, no Python per PID.

    Started with posix_spawn (its stdout, the last PID it got, on a pipe); `result()` waits
    for it and, should the helper fail, burns the rest in Python."""

    pre_restore = False

    def __init__(self, helper: str, floor: int = PID_FLOOR, start: float | None = None) -> None:
        self._start = time.monotonic() if start is None else start
        self._floor = self.floor = floor
        self._before = last_pid()
        self._pid: int | None = None
        self._read, write_end = os.pipe()
        try:
            self._pid = os.posix_spawn(
                helper, [helper, str(floor)], {}, file_actions=[(os.POSIX_SPAWN_DUP2, write_end, 1)]
            )
        except OSError:
            self._pid = None
        finally:
            os.close(write_end)

    def result(self) -> FloorResult:
        try:
            while os.read(self._read, 64):
                pass
        except OSError:
            pass
        finally:
            os.close(self._read)
        if self._pid is not None:
            _, status = os.waitpid(self._pid, 0)
            current = last_pid()
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and current >= self._floor - 1:
                burned = max(0, current - self._before)
                return FloorResult("helper", current, burned, time.monotonic() - self._start)
        return raise_floor(self._floor, use_helper=False)


class ReadyFloor:
    """The floor needed no work (already above it, or ns_last_pid was writable)."""

    pre_restore = False

    def __init__(self, result: FloorResult, floor: int = PID_FLOOR) -> None:
        self._result = result
        self.floor = floor

    def result(self) -> FloorResult:
        return self._result


#: What the CLI hands the supervisor: anything with `result() -> FloorResult`.
EarlyFloor = ReadyFloor | HelperFloor | BackgroundFloor


def early_floor(floor: int = PID_FLOOR, *, pre_restore: bool = False) -> EarlyFloor:
    """Start raising the floor beside the agent's own start-up: the bundle's helper when there
    is one, else a Python thread. `pre_restore`: the floor a restore may start from
    (PRE_RESTORE_FLOOR or `clearing_floor`), to be finished before CRIU runs."""
    done = _try_ns_last_pid(floor, time.monotonic())
    started: EarlyFloor
    if done is not None:
        started = ReadyFloor(done, floor)
    else:
        helper = helper_path()
        started = HelperFloor(helper, floor) if helper is not None else BackgroundFloor(floor)
    started.pre_restore = pre_restore
    return started
