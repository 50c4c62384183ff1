"""The files that must travel with a checkpoint, and putting them back before a restore.

A new container starts with an empty writable layer and empty tmpfs mounts, and CRIU refuses
to restore a file that vanished or changed size. So every regular file the tree holds open or
maps that lives in the container's own filesystem is saved with the checkpoint:

* on a tmpfs the container mounted itself, read-write (/tmp, /dev/shm, /run): every such file;
* on the root filesystem (the overlay): a file opened for writing, mapped shared-writable, or
  changed (ctime) since the application's first start - the others come unchanged from the
  image's read-only layers, and copying them (libraries, jars) would only cost time;
* never files on volumes (PVCs, hostPath, configMaps, secrets: they come back by themselves),
  nor the checkpoint store, nor deleted files (CRIU keeps those in the image as ghosts).

`checkpoint-files` adds paths (files or whole directories) the user names. Everything is copied
with mode, owner and times. The current directory of each process is recreated as well.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import FilesError, GenerationInvalidError
from .inputs import LIST_LIMIT, BadInput, Missing, open_beneath, read_json, safe_abspath
from .proctree import PROC

FILES_JSON = "files.json"
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


def _meta(path: str, kind: str) -> dict[str, Any]:
    st = os.lstat(path)
    entry: dict[str, Any] = {
        "path": path,
        "kind": kind,
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime_ns": st.st_mtime_ns,
        "atime_ns": st.st_atime_ns,
    }
    if kind == "file":
        entry["size"] = st.st_size
    if kind == "symlink":
        entry["target"] = os.readlink(path)
    return entry


def _parents(path: str) -> list[str]:
    parts = Path(path).parents
    return [str(p) for p in reversed(parts) if str(p) != "/"]


def _private_dirs(base: Path, rel: str) -> None:
    """mkdir -p base/rel, every directory created 0700 (the store's rule, docs/security.md)."""
    path = base
    for part in rel.split("/"):
        path = path / part
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)


def _copy_into_store(path: str, copy: Path) -> int:
    """Copy a regular file of the container into the store, 0600 whatever its own mode (its
    mode and owner are recorded in files.json and applied when it is put back)."""
    src = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dst = os.open(
            copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            return _copy_fd(src, dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_fd(src: int, dst: int) -> int:
    copied = 0
    while chunk := os.read(src, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
        copied += len(chunk)
    return copied


def setid(entry: dict[str, Any]) -> bool:
    """A regular file whose mode carries setuid or setgid."""
    return entry["kind"] == "file" and bool(entry["mode"] & (stat.S_ISUID | stat.S_ISGID))


def save(files: Iterable[str], dirs: Iterable[str], dest: Path) -> list[dict[str, Any]]:
    """Copy files (with their parent directories' metadata) under dest/files/; write
    dest/files.json. Returns the entries written."""
    entries: dict[str, dict[str, Any]] = {}
    try:
        for directory in sorted(set(dirs)):
            for parent in [*_parents(directory), directory]:
                if parent not in entries and os.path.isdir(parent):
                    entries[parent] = _meta(parent, "dir")
        for path in sorted(set(files)):
            for parent in _parents(path):
                if parent not in entries:
                    entries[parent] = _meta(parent, "dir")
            if os.path.islink(path):
                entries[path] = _meta(path, "symlink")
                continue
            if not os.path.isfile(path):
                continue
            entry = _meta(path, "file")
            rel = path.lstrip("/")
            _private_dirs(dest, "files/" + os.path.dirname(rel) if "/" in rel else "files")
            entry["size"] = _copy_into_store(path, dest / "files" / rel)
            entries[path] = entry
        ordered = sorted(entries.values(), key=lambda e: (e["path"].count("/"), e["path"]))
        fd = os.open(dest / FILES_JSON, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, (json.dumps(ordered, indent=1) + "\n").encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise FilesError(f"saving {exc.filename or 'files'} failed: {exc.strerror}") from exc
    return ordered


def load_entries(
    source: Path, setid_recorded: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """files.json of a generation, every entry checked: an absolute, normalised path, a known
    kind, numeric mode/owner/times, and no setuid/setgid file that the manifest does not
    record as saved by the agent itself. Raises GenerationInvalidError naming the problem."""
    name = source.name
    path = source / FILES_JSON
    try:
        raw = read_json(path, LIST_LIMIT)
    except Missing:
        return []
    except BadInput as exc:
        raise GenerationInvalidError(name, f"{FILES_JSON} {exc.problem}") from None
    if not isinstance(raw, list):
        raise GenerationInvalidError(name, f"{FILES_JSON} is not a JSON list")
    entries = []
    for index, entry in enumerate(raw):
        problem = _entry_problem(entry)
        if problem is not None:
            raise GenerationInvalidError(name, f"{FILES_JSON} entry {index}: {problem}")
        if setid(entry) and entry["path"] not in setid_recorded:
            raise GenerationInvalidError(
                name,
                f"{FILES_JSON} asks to create the setuid/setgid file {entry['path']}, which"
                " the agent did not record saving",
            )
        entries.append(entry)
    return entries


_ID_MAX = 2**32 - 2
_TIME_MAX = 2**63 - 1


def _entry_problem(entry: object) -> str | None:
    if not isinstance(entry, dict):
        return "not an object"
    if safe_abspath(entry.get("path")) is None:
        return f"path {str(entry.get('path'))[:100]!r} is not a normalised absolute path"
    kind = entry.get("kind")
    if kind not in ("dir", "file", "symlink"):
        return f"unknown kind {str(kind)[:20]!r}"
    for field, top in (("uid", _ID_MAX), ("gid", _ID_MAX)):
        value = entry.get(field)
        if type(value) is not int or not 0 <= value <= top:
            return f"{field} is not an id"
    if kind == "symlink":
        target = entry.get("target")
        if not isinstance(target, str) or not target or "\0" in target or len(target) > 4096:
            return "symlink target is not a path"
        return None
    mode = entry.get("mode")
    if type(mode) is not int or not 0 <= mode <= 0o7777:
        return "mode is not a permission mode"
    for field in ("atime_ns", "mtime_ns"):
        value = entry.get(field)
        if type(value) is not int or not -_TIME_MAX <= value <= _TIME_MAX:
            return f"{field} is not a time"
    return None


def put_back(source: Path, setid_recorded: frozenset[str] = frozenset()) -> list[str]:
    """Recreate the saved directories and files at their paths, before CRIU restores.

    Every entry is checked first (load_entries); the saved copies are read without following
    a symbolic link inside the store, and written without following one at their
    destination. Returns the files written, so that a failed restore can remove them again."""
    entries = load_entries(source, setid_recorded)
    written: list[str] = []
    try:
        for entry in entries:
            path = entry["path"]
            kind = entry["kind"]
            if kind == "dir":
                os.makedirs(path, exist_ok=True)
            elif kind == "symlink":
                if os.path.lexists(path):
                    os.unlink(path)
                os.symlink(entry["target"], path)
                written.append(path)
                continue
            else:
                _put_back_file(source, path, entry)
                written.append(path)
                continue
            os.chown(path, entry["uid"], entry["gid"])
            os.chmod(path, entry["mode"])
        # Times last: writing a file into a directory changes the directory's mtime.
        for entry in reversed(entries):
            if entry["kind"] != "symlink":
                os.utime(entry["path"], ns=(entry["atime_ns"], entry["mtime_ns"]))
    except OSError as exc:
        raise FilesError(
            f"putting back {exc.filename or 'saved files'} failed: {exc.strerror}"
        ) from exc
    return written


def _put_back_file(source: Path, path: str, entry: dict[str, Any]) -> None:
    try:
        src = open_beneath(source, "files/" + path.lstrip("/"))
    except BadInput as exc:
        raise GenerationInvalidError(source.name, f"saved copy of {path} {exc.problem}") from None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(os.lstat(path).st_mode):
                os.unlink(path)
        dst = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            _copy_fd(src, dst)
            # Owner first: chown clears setuid/setgid, chmod then sets the recorded mode.
            os.fchown(dst, entry["uid"], entry["gid"])
            os.fchmod(dst, entry["mode"])
        finally:
            os.close(dst)
    finally:
        os.close(src)


def remove(paths: Iterable[str]) -> None:
    """Undo put_back's files after a failed restore (directories are left: harmless)."""
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
