"""Which files must travel with a checkpoint: those of the tree's open files and mappings that
live in the container's own filesystem, and the `checkpoint-files` the user names.

A new container starts with an empty writable layer and empty tmpfs mounts, and CRIU refuses
to restore a file that vanished or changed size. So every regular file the tree holds open or
maps that lives in the container's own filesystem is saved with the checkpoint:

* on a tmpfs the container mounted itself, read-write (/tmp, /dev/shm, /run): every such file;
* on the root filesystem (the overlay): a file opened for writing, mapped shared-writable, or
  changed (ctime) since the application's first start - the others come unchanged from the
  image's read-only layers, and copying them (libraries, jars) would only cost time;
* never files on volumes (PVCs, hostPath, configMaps, secrets: they come back by themselves),
  nor the checkpoint store, nor deleted files (CRIU keeps those in the image as ghosts).

`checkpoint-files` adds paths (files or whole directories) the user names. The current
directory of each process is recreated as well. Copying them into the generation and putting
them back is files.py's.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterable, Sequence

from .proctree import PROC

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND


@dataclasses.dataclass(frozen=True)
class Mount:
    mount_id: int
    mount_point: str
    root: str
    options: frozenset[str]
    fstype: str


def read_mounts(pid: int | str = "self") -> dict[int, Mount]:
    mounts = {}
    for line in (PROC / str(pid) / "mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        mount_id = int(fields[0])
        mounts[mount_id] = Mount(
            mount_id=mount_id,
            mount_point=_unescape(fields[4]),
            root=_unescape(fields[3]),
            options=frozenset(fields[5].split(",")),
            fstype=right.split()[0],
        )
    return mounts


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return text.encode().decode("unicode_escape") if "\\" in text else text


def own_mount_ids(mounts: dict[int, Mount], exclude: Sequence[str]) -> tuple[set[int], set[int]]:
    """(root mounts, tmpfs mounts) that belong to the container itself and are writable."""
    roots: set[int] = set()
    tmpfs: set[int] = set()
    for mount in mounts.values():
        if any(_under(mount.mount_point, path) for path in exclude):
            continue
        if mount.mount_point == "/" and "rw" in mount.options:
            roots.add(mount.mount_id)
        elif mount.fstype == "tmpfs" and "rw" in mount.options and mount.root == "/":
            tmpfs.add(mount.mount_id)
    return roots, tmpfs


def _under(path: str, base: str) -> bool:
    base = base.rstrip("/") or "/"
    return path == base or path.startswith(base if base == "/" else base + "/")


def mount_of(path: str, mounts: dict[int, Mount]) -> Mount | None:
    """The mount a path lives on: the longest mount point that is a prefix of it."""
    best: Mount | None = None
    for mount in mounts.values():
        if _under(path, mount.mount_point) and (
            best is None or len(mount.mount_point) >= len(best.mount_point)
        ):
            best = mount
    return best


def _fdinfo(pid: int, fd: str) -> dict[str, str]:
    info = {}
    try:
        for line in (PROC / str(pid) / "fdinfo" / fd).read_text().splitlines():
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def open_files(
    pids: Iterable[int], *, exclude: Sequence[str], changed_since: float
) -> tuple[list[str], list[str]]:
    """(files to save, directories to recreate) for the processes `pids`, sorted."""
    mounts = read_mounts()
    roots, tmpfs = own_mount_ids(mounts, exclude)
    chosen: set[str] = set()
    dirs: set[str] = set()

    def consider(path: str, mount_id: int | None, writable: bool) -> None:
        if not path.startswith("/") or any(_under(path, e) for e in exclude):
            return
        if mount_id is None:
            mount = mount_of(path, mounts)
            mount_id = mount.mount_id if mount else None
        if mount_id in tmpfs:
            chosen.add(path)
        elif mount_id in roots:
            if writable:
                chosen.add(path)
                return
            try:
                if os.stat(path).st_ctime >= changed_since:
                    chosen.add(path)
            except OSError:
                return

    for pid in pids:
        base = PROC / str(pid)
        try:
            fds = os.listdir(base / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(base / "fd" / fd)
                target = os.readlink(base / "fd" / fd)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_nlink == 0:
                continue
            info = _fdinfo(pid, fd)
            flags = int(info.get("flags", "0"), 8)
            mnt = int(info["mnt_id"]) if "mnt_id" in info else None
            consider(target, mnt, bool(flags & _WRITE_FLAGS))
        try:
            maps = (base / "maps").read_text().splitlines()
        except OSError:
            maps = []
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or not parts[5].startswith("/") or parts[5].endswith(" (deleted)"):
                continue
            perms = parts[1]
            consider(parts[5], None, perms[1] == "w" and perms[3] == "s")
        try:
            cwd = os.readlink(base / "cwd")
        except OSError:
            continue
        mount = mount_of(cwd, mounts)
        if mount is not None and (mount.mount_id in roots or mount.mount_id in tmpfs):
            dirs.add(cwd)
    return sorted(p for p in chosen if os.path.isfile(p)), sorted(dirs)


def expand(paths: Iterable[str]) -> tuple[list[str], list[str]]:
    """`checkpoint-files` entries as (files, directories); missing paths are skipped."""
    files: list[str] = []
    dirs: list[str] = []
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            dirs.append(path)
            for dirpath, dirnames, filenames in os.walk(path):
                dirs.extend(os.path.join(dirpath, d) for d in dirnames)
                files.extend(os.path.join(dirpath, f) for f in filenames)
        elif os.path.lexists(path):
            files.append(path)
    return files, dirs
