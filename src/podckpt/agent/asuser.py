"""Running CRIU's dump under the application's own uid and gid, capabilities kept.

CRIU reads the rlimits of every task it dumps (prlimit64). For a task of another user the
kernel allows that only when the caller's real uid/gid equal the task's real, effective and
saved uid/gid, or with CAP_SYS_RESOURCE, which containers do not get (CRIU-NOTES: `Can't get
rlimit 0: Operation not permitted`). So a tree that runs as one non-root user is dumped by a
CRIU running as that user, with the agent's capabilities handed over as *ambient* capabilities
(what `setpriv --reuid --regid --inh-caps ... --ambient-caps ...` does): they survive the exec
of CRIU although it is not root. CRIU then runs in `--unprivileged` mode. Restores run as root.

posix_spawn cannot change credentials or capabilities between fork and exec; this is done in
subprocess's `preexec_fn` (fork + exec), with ctypes prepared before the fork.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

from . import capabilities
from .errors import EnvironmentProblem

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_PR_CAP_AMBIENT_LOWER = 3
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

NEEDED_FOR_USER_DUMP = capabilities.USER_DUMP_CAPABILITIES


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def check(uid: int, gid: int, mask: int | None = None) -> None:
    """Refuse, in one line, a user dump this agent cannot do."""
    mask = capabilities.effective_capabilities() if mask is None else mask
    absent = capabilities.missing(NEEDED_FOR_USER_DUMP, mask)
    if absent:
        raise EnvironmentProblem(
            f"the application runs as uid {uid} gid {gid}: CRIU must dump it as that user,"
            " which needs " + ", ".join(absent) + " in the container (containerd's default"
            " capability set has them)"
        )


def preexec(uid: int, gid: int, mask: int | None = None) -> Callable[[], None]:
    """A `preexec_fn` that makes the child uid/gid with the agent's capabilities ambient.

    Everything that allocates or loads (libc, structures, the list of capabilities) is done
    here, in the parent; the child only makes system calls."""
    mask = capabilities.effective_capabilities() if mask is None else mask
    libc = ctypes.CDLL(None, use_errno=True)
    prctl, capset = libc.prctl, libc.capset
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    low, high = mask & 0xFFFFFFFF, mask >> 32 & 0xFFFFFFFF
    data = (_CapData * 2)(_CapData(low, low, low), _CapData(high, high, high))
    caps = [n for n in range(64) if mask >> n & 1]

    def fail(what: str) -> None:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")

    def child() -> None:
        if prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
            fail("prctl(PR_SET_KEEPCAPS)")
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if capset(ctypes.byref(header), data) != 0:
            fail("capset")
        for cap in caps:
            if prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0:
                fail(f"prctl(PR_CAP_AMBIENT_RAISE, {cap})")

    return child


def application_preexec(
    user: tuple[int, int, tuple[int, ...]] | None, drop: tuple[int, ...]
) -> Callable[[], None]:
    """A `preexec_fn` that starts the application as it would have run without podckpt.

    `drop` (capability numbers the webhook added for the agent only) leave the child's
    bounding set first (that needs CAP_SETPCAP, which is gone once a non-root uid is taken),
    so a setuid-root binary cannot bring them back either. Then the user's groups, gid and
    uid (real, effective and saved), which clears a non-root child's capabilities as they
    would have been cleared at the runtime's exec; last `drop` leaves the remaining sets: a
    root child keeps the container's capabilities minus `drop`.

    Like `preexec`, everything is prepared here; the child only makes system calls."""
    libc = ctypes.CDLL(None, use_errno=True)
    prctl, capset, capget = libc.prctl, libc.capset, libc.capget
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    keep_low = ~sum(1 << c for c in drop if c < 32) & 0xFFFFFFFF
    keep_high = ~sum(1 << (c - 32) for c in drop if c >= 32) & 0xFFFFFFFF

    def fail(what: str) -> None:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")

    def child() -> None:
        for cap in drop:
            if prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                fail(f"prctl(PR_CAPBSET_DROP, {cap})")
            prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_LOWER, cap, 0, 0)
        if user is not None:  # while CAP_SETUID/CAP_SETGID are still effective
            uid, gid, groups = user
            os.setgroups(list(groups))
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        if drop:  # a root child keeps its other capabilities; a non-root one has none left
            if capget(ctypes.byref(header), data) != 0:
                fail("capget")
            for part, keep in ((data[0], keep_low), (data[1], keep_high)):
                part.effective &= keep
                part.permitted &= keep
                part.inheritable &= keep
            if capset(ctypes.byref(header), data) != 0:
                fail("capset")

    return child


@contextlib.contextmanager
def reading_proc_of(uid: int, gid: int) -> Iterator[None]:
    """Read /proc of the application's tasks as their user (fsuid/fsgid of this thread).

    /proc/PID/fd, fdinfo and maps of another user's task need CAP_SYS_PTRACE, which containers
    do not get; with the task's own fsuid and fsgid the agent passes the same check. Only
    /proc is read meanwhile: the kernel drops CAP_CHOWN, CAP_DAC_OVERRIDE & co. from the
    effective set while fsuid is not 0, and gives them back afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)
    old_gid = libc.setfsgid(gid)
    old_uid = libc.setfsuid(uid)
    try:
        yield
    finally:
        libc.setfsuid(old_uid)
        libc.setfsgid(old_gid)
