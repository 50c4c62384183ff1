"""Saving the files that travel with a checkpoint into its generation, and putting them back
before a restore.

A new container starts with an empty writable layer and empty tmpfs mounts, and CRIU refuses
to restore a file that vanished or changed size: the files filechoice.py chooses are copied
into `files/` of the generation with their mode, owner and times recorded in files.json, and
recreated at their paths before CRIU runs. files.json is read back defensively: every entry is
checked, and a setuid/setgid file is created only when the manifest records that the agent
saved it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import FilesError, GenerationInvalidError
from .inputs import LIST_LIMIT, BadInput, Missing, open_beneath, read_json, safe_abspath

FILES_JSON = "files.json"


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
