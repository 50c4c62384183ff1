"""The in-namespace half of the sandbox: what runc's init does, as a separate process.

It runs as `python -m podckpt.devtools._nsinit init|exec CONFIG_JSON` so that the launcher
(often a multi-threaded pytest) never forks itself. `init` unshares the namespaces, forks the
sandbox's PID 1, prepares its root and execs the user's argv; it stays behind only to relay
PID 1's exit status (128+signal when killed). `exec` joins a running sandbox like
`kubectl exec`. Errors before exec go to the status fd as one "error: ..." line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import stat
import struct
import sys
from typing import Any

from podckpt.devtools import _linux as L

_NS_FLAGS = L.CLONE_NEWNS | L.CLONE_NEWPID | L.CLONE_NEWIPC | L.CLONE_NEWUTS | L.CLONE_NEWNET
_DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
            "urandom": (1, 9), "tty": (5, 0)}  # fmt: skip
_DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
              "stderr": "/proc/self/fd/2", "core": "/proc/kcore", "ptmx": "pts/ptmx"}  # fmt: skip
# runc's defaults for Kubernetes pods (maskedPaths / readonlyPaths).
_MASKED = ("proc/acpi", "proc/asound", "proc/kcore", "proc/keys", "proc/latency_stats",
           "proc/timer_list", "proc/timer_stats", "proc/sched_debug", "proc/scsi",
           "sys/firmware", "sys/devices/virtual/powercap")  # fmt: skip
_READONLY = ("proc/bus", "proc/fs", "proc/irq", "proc/sys", "proc/sysrq-trigger")
_NOSUID_NODEV_NOEXEC = L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, 0x8913, req))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(sock, 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1 | 0x40))


def _add_addresses(addresses: list[str]) -> None:
    """The pod's IP addresses, as aliases of lo (lo:1, lo:2, ...): reachable only from inside."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for number, address in enumerate(addresses, start=1):
            name = f"lo:{number}".encode()
            req = struct.pack("16sH2s4s8x", name, socket.AF_INET, b"", socket.inet_aton(address))
            fcntl.ioctl(sock, 0x8916, req)  # SIOCSIFADDR
            mask = struct.pack("16sH2s4s8x", name, socket.AF_INET, b"", b"\xff" * 4)
            fcntl.ioctl(sock, 0x891C, mask)  # SIOCSIFNETMASK: /32


def _inside(root: str, path: str) -> str:
    """Resolve path under root, following symlinks as if root were / (never escaping it)."""
    parts = [p for p in path.split("/") if p]
    resolved = root
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            resolved = os.path.dirname(resolved) if resolved != root else root
            continue
        candidate = os.path.join(resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(f"too many symlinks under {root}: {path}")
            link = os.readlink(candidate)
            parts = [p for p in link.split("/") if p] + parts
            if link.startswith("/"):
                resolved = root
            continue
        resolved = candidate
    return resolved


def _mknod_dev(dev: str) -> None:
    for name, (major, minor) in _DEVICES.items():
        node = os.path.join(dev, name)
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(node, 0o666)  # noqa: S103 - world-usable, as in every container
    for name, target in _DEV_LINKS.items():
        os.symlink(target, os.path.join(dev, name))


def _mount_dev(root: str) -> None:
    dev = os.path.join(root, "dev")
    os.makedirs(dev, exist_ok=True)
    L.mount("tmpfs", dev, "tmpfs", L.MS_NOSUID, "mode=755,size=65536k")
    _mknod_dev(dev)
    for sub in ("pts", "shm", "mqueue"):
        os.mkdir(os.path.join(dev, sub))
    L.mount("devpts", f"{dev}/pts", "devpts", L.MS_NOSUID | L.MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5")  # fmt: skip
    L.mount("shm", f"{dev}/shm", "tmpfs", _NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k")
    L.mount("mqueue", f"{dev}/mqueue", "mqueue", _NOSUID_NODEV_NOEXEC)


def _mount_proc_sys(root: str) -> None:
    proc = os.path.join(root, "proc")
    os.makedirs(proc, exist_ok=True)
    L.mount("proc", proc, "proc", _NOSUID_NODEV_NOEXEC)
    sysfs = os.path.join(root, "sys")
    os.makedirs(sysfs, exist_ok=True)
    with contextlib.suppress(OSError):  # optional: nothing in the agent needs sysfs
        L.mount("sysfs", sysfs, "sysfs", _NOSUID_NODEV_NOEXEC | L.MS_RDONLY)
    for rel in _READONLY:
        path = os.path.join(root, rel)
        if os.path.exists(path):
            L.mount(path, path, None, L.MS_BIND | L.MS_REC)
            L.mount(None, path, None,
                    L.MS_BIND | L.MS_REMOUNT | L.MS_RDONLY | _NOSUID_NODEV_NOEXEC)  # fmt: skip
    for rel in _MASKED:
        path = os.path.join(root, rel)
        if os.path.isdir(path):
            L.mount("tmpfs", path, "tmpfs", L.MS_RDONLY)
        elif os.path.exists(path):
            L.mount(os.path.join(root, "dev/null"), path, None, L.MS_BIND)


def _mount_binds(root: str, binds: list[dict[str, Any]]) -> None:
    for bind in binds:
        source, target = bind["source"], _inside(root, bind["target"])
        if os.path.isdir(source):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.exists(target):
                open(target, "a").close()
        L.mount(source, target, None, L.MS_BIND | L.MS_REC)
        if bind["readonly"]:
            L.mount(None, target, None, L.MS_BIND | L.MS_REMOUNT | L.MS_RDONLY)


def _pivot(root: str) -> None:
    # runc's pivot_root(".", ".") trick: no put_old directory left in the container.
    old = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    os.chdir(root)
    L.pivot_root(".", ".")
    os.fchdir(old)
    L.mount(None, ".", None, L.MS_SLAVE | L.MS_REC)
    L.umount2(".", L.MNT_DETACH)
    os.close(old)
    os.chdir("/")


def _console(cfg: dict[str, Any]) -> None:
    """What runc does for `tty: true`: a pty from the container's own devpts becomes PID 1's
    stdin/stdout/stderr and controlling terminal; the master goes to the launcher over the
    console socket (as runc's --console-socket hands it to containerd)."""
    sock = socket.socket(fileno=cfg["console_fd"])
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
    fcntl.ioctl(master, 0x40045431, struct.pack("i", 0))  # TIOCSPTLCK: unlock
    number = struct.unpack("I", fcntl.ioctl(master, 0x80045430, b"\0\0\0\0"))[0]  # TIOCGPTN
    slave = os.open(f"/dev/pts/{number}", os.O_RDWR | os.O_NOCTTY)
    fcntl.ioctl(slave, 0x540E, 0)  # TIOCSCTTY
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)
    socket.send_fds(sock, [b"console"], [master])
    os.close(master)
    sock.close()


def _restrict(cfg: dict[str, Any]) -> None:
    # Seccomp first, while CAP_SYS_ADMIN still allows it without no_new_privs (as runc does).
    if cfg["seccomp"]:
        L.install_allow_all_seccomp()
    if cfg["caps"] is not None:
        L.restrict_capabilities(cfg["caps"])
    if cfg.get("no_new_privs"):
        L.prctl(L.PR_SET_NO_NEW_PRIVS, 1)  # allowPrivilegeEscalation: false


def _exec(cfg: dict[str, Any], status_fd: int | None) -> None:
    if status_fd is None:
        os.closerange(3, 65536)
    else:
        os.set_inheritable(status_fd, False)  # its EOF tells the launcher exec happened
        os.closerange(3, status_fd)
        os.closerange(status_fd + 1, 65536)
    argv, env = cfg["argv"], cfg["env"]
    os.execvpe(argv[0], argv, env)  # noqa: S606 - PID 1 is argv itself, no shell


def _pid1(cfg: dict[str, Any], status_fd: int) -> None:
    L.prctl(L.PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setsid()
    state = cfg["state_dir"]
    root = os.path.join(state, "merged")
    L.mount("overlay", root, "overlay", 0,
            f"lowerdir={cfg['rootfs']},upperdir={state}/upper,workdir={state}/work")  # fmt: skip
    _mount_dev(root)
    _mount_proc_sys(root)
    _mount_binds(root, cfg["binds"])
    _pivot(root)
    os.chdir(cfg["workdir"])
    if cfg.get("console_fd") is not None:
        _console(cfg)
    _restrict(cfg)
    _exec(cfg, status_fd)


def _relay(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def _report(fd: int, exc: BaseException) -> None:
    msg = f"error: {exc}".replace("\n", " ") + "\n"
    os.write(fd, msg.encode(errors="replace"))


def init(cfg: dict[str, Any]) -> None:
    status_fd = cfg["status_fd"]
    try:
        L.prctl(L.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != cfg["launcher_pid"]:
            os._exit(1)  # the launcher died before we could arm the death signal
        L.unshare(_NS_FLAGS)
        socket.sethostname(cfg["hostname"])
        _loopback_up()
        _add_addresses(cfg.get("addresses") or [])
        L.mount(None, "/", None, L.MS_REC | L.MS_PRIVATE)
    except BaseException as exc:  # noqa: BLE001 - anything before exec is reported
        _report(status_fd, exc)
        os._exit(127)
    pid = os.fork()
    if pid == 0:
        try:
            _pid1(cfg, status_fd)
        except BaseException as exc:  # noqa: BLE001 - anything before exec is reported
            _report(status_fd, exc)
        os._exit(127)
    os.write(status_fd, f"pid {pid}\n".encode())
    os.close(status_fd)
    if cfg.get("console_fd") is not None:
        os.close(cfg["console_fd"])
    _relay(pid)


def join(cfg: dict[str, Any]) -> None:
    target = cfg["pid"]
    order = (("ipc", L.CLONE_NEWIPC), ("uts", L.CLONE_NEWUTS), ("net", L.CLONE_NEWNET),
             ("pid", L.CLONE_NEWPID), ("mnt", L.CLONE_NEWNS))  # fmt: skip
    try:
        fds = [(os.open(f"/proc/{target}/ns/{name}", os.O_RDONLY), flag) for name, flag in order]
        root = os.open(f"/proc/{target}/root", os.O_RDONLY | os.O_DIRECTORY)
        for fd, flag in fds:
            L.setns(fd, flag)
            os.close(fd)
        os.fchdir(root)
        os.chroot(".")
        os.close(root)
        os.chdir(cfg["workdir"])
    except OSError as exc:
        print(f"sandbox exec: cannot enter sandbox {target}: {exc}", file=sys.stderr)
        os._exit(126)
    pid = os.fork()
    if pid == 0:
        try:
            L.prctl(L.PR_SET_PDEATHSIG, signal.SIGKILL)
            _restrict(cfg)
            _exec(cfg, None)
        except BaseException as exc:  # noqa: BLE001 - anything before exec is reported
            print(f"sandbox exec: {exc}", file=sys.stderr)
        os._exit(127)
    _relay(pid)


def main() -> None:
    mode, cfg = sys.argv[1], json.loads(sys.argv[2])
    {"init": init, "exec": join}[mode](cfg)


if __name__ == "__main__":
    main()
