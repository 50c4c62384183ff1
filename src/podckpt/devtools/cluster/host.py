"""What the cluster changes on the host outside its state dir, and how it is put back:
cgroups, mounts, and the kubelet's links in /var/log/containers.

Each node's kubelet runs its pods under its own cgroup root (``/podckpt-<bridge>``) in every
mounted hierarchy, so a node's processes are found - and killed - by its cgroup tree, never
by name; mounts are found under the node's state dir.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def cgroup_hierarchies() -> list[Path]:
    """Mounted cgroup hierarchies (v1 controllers, and the v2 'unified' mount if present)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split(" - ")
        if len(parts) == 2 and parts[1].split()[0] in ("cgroup", "cgroup2"):
            out.append(Path(line.split()[4]))
    return out


def create_cgroup_root(cgroup_root: str) -> None:
    """The kubelet requires its `cgroupRoot` to exist in every hierarchy."""
    for h in cgroup_hierarchies():
        d = h / cgroup_root.lstrip("/")
        d.mkdir(exist_ok=True)
        if h.name == "cpuset":
            # A new cpuset cgroup is unusable until it has cpus and mems.
            for f in ("cpuset.cpus", "cpuset.mems"):
                if (d / f).exists() and not (d / f).read_text().strip():
                    (d / f).write_text((h / f).read_text())


def cgroup_pids(cgroup_root: str) -> set[int]:
    """Every process in ``cgroup_root``'s subtree, in any hierarchy."""
    pids: set[int] = set()
    for h in cgroup_hierarchies():
        top = h / cgroup_root.lstrip("/")
        if not top.is_dir():
            continue
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def kill_cgroup(cgroup_root: str) -> None:
    """SIGKILL every process under ``cgroup_root`` until none is left (a fork between reading
    and killing is caught on the next round)."""
    for _ in range(20):
        pids = cgroup_pids(cgroup_root)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def remove_cgroup_root(cgroup_root: str) -> None:
    """rmdir our cgroup subtree, deepest first, in every hierarchy (kills leftovers first)."""
    for h in cgroup_hierarchies():
        top = h / cgroup_root.lstrip("/")
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, top]:
            procs = d / "cgroup.procs"
            with contextlib.suppress(OSError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), 9)
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def unmount_under(prefixes: list[str]) -> None:
    """Unmount every mount at or below ``prefixes`` (deepest first, lazily if busy)."""
    for _ in range(3):
        points = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mp = line.split()[4].replace("\\040", " ")
            if any(mp == p or mp.startswith(p.rstrip("/") + "/") for p in prefixes):
                points.append(mp)
        if not points:
            return
        for mp in sorted(set(points), key=lambda p: -len(p)):
            r = subprocess.run(["umount", mp], capture_output=True, check=False)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True, check=False)


def remove_container_log_links(pod_logs_dir: Path) -> None:
    """The kubelet also links logs from the fixed /var/log/containers: remove ours."""
    d = Path("/var/log/containers")
    if not d.is_dir():
        return
    for link in d.iterdir():
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(str(pod_logs_dir)):
                link.unlink()


def read_ip_forward() -> str:
    """The host's net.ipv4.ip_forward (the CNI bridge plugin sets it to 1)."""
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


def restore_ip_forward(value: str) -> None:
    """Put net.ipv4.ip_forward back to what it was before the first node started."""
    if value in ("0", "1"):
        with contextlib.suppress(OSError):
            Path("/proc/sys/net/ipv4/ip_forward").write_text(value)
