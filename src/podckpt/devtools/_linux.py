"""The few Linux system calls a container runtime needs that Python 3.11's os module lacks
(unshare, setns, mount, pivot_root, capset, seccomp), through ctypes."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

CAP_NAMES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
]

# (pivot_root, capset) per architecture: the only raw syscall numbers we need.
_SYSCALLS = {"x86_64": (155, 126), "aarch64": (41, 91)}

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]


def _check(result: int, what: str) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    res = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(res, f"mount {source or ''} on {target} ({fstype or 'bind/remount'})")


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    nr = _SYSCALLS[platform.machine()][0]
    _check(_libc.syscall(ctypes.c_long(nr), _b(new_root), _b(put_old)), "pivot_root")


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    _check(_libc.prctl(option, arg2, arg3, 0, 0), f"prctl({option})")


def cap_numbers(names: list[str]) -> list[int]:
    """Map "CAP_X" or "X" (any case) to capability numbers; unknown names are errors."""
    numbers = []
    for name in names:
        short = name.upper().removeprefix("CAP_")
        if short not in CAP_NAMES:
            raise ValueError(f"unknown capability {name!r}")
        numbers.append(CAP_NAMES.index(short))
    return numbers


def last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def restrict_capabilities(keep: list[int]) -> None:
    """Reduce bounding, effective, permitted, inheritable and ambient sets to exactly keep.

    Ambient is raised too so that the sets survive execve even for non-root programs, as
    runc does; for uid 0 the kernel recomputes permitted = bounding | inheritable anyway.
    """
    keep_set = set(keep)
    for cap in range(last_cap() + 1):
        if cap not in keep_set:
            prctl(PR_CAPBSET_DROP, cap)
    mask = 0
    for cap in keep_set:
        mask |= 1 << cap
    header = struct.pack("=Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    lo, hi = mask & 0xFFFFFFFF, mask >> 32
    data = struct.pack("=6I", lo, lo, lo, hi, hi, hi)
    hbuf = ctypes.create_string_buffer(header, len(header))
    dbuf = ctypes.create_string_buffer(data, len(data))
    nr = _SYSCALLS[platform.machine()][1]
    _check(_libc.syscall(ctypes.c_long(nr), hbuf, dbuf), "capset")
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in sorted(keep_set):
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)


def install_allow_all_seccomp() -> None:
    """A one-instruction filter (RET ALLOW): it changes no syscall's result, but the task is
    in seccomp mode 2, which is what stops CRIU from dumping it (like RuntimeDefault)."""
    insn = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)  # BPF_RET|BPF_K, SECCOMP_RET_ALLOW
    filt = ctypes.create_string_buffer(insn, len(insn))
    prog = struct.pack("=HxxxxxxQ", 1, ctypes.addressof(filt))
    pbuf = ctypes.create_string_buffer(prog, len(prog))
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(pbuf))
