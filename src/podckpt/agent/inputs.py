"""Reading what the agent does not control: files on the checkpoint volume.

Everything on the volume may be damaged (a full disk, a crash, a bad sector) or written by
someone else (another pod that mounts the volume, a restored backup, a volume reused by
another namespace). So every read here is bounded in size, decodes strictly, parses JSON
without letting a nesting bomb raise RecursionError, never follows a symbolic link inside the
store, and fails with `BadInput`, which names the file and says what is wrong with it. Callers
turn that into a fallback (a generation refused, a store set aside), never into a traceback.
"""

from __future__ import annotations

import json
import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Any

#: store.json, LATEST, markers: a few bytes each.
SMALL_LIMIT = 64 << 10
#: manifest.json and files.json: one entry per file (~150 bytes); 64 MiB is 400,000 files.
LIST_LIMIT = 64 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class BadInput(Exception):
    """A file on the volume is missing, unreadable or malformed; the message names it."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class Missing(BadInput):
    """The file does not exist (often not an error: no LATEST yet)."""


def read_bounded(path: str | os.PathLike[str], limit: int = SMALL_LIMIT) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; a symlink, a directory, a FIFO or
    a larger file is BadInput (a FIFO would block the agent, a huge file exhaust its memory)."""
    try:
        fd = os.open(path, _FILE_FLAGS)
    except FileNotFoundError:
        raise Missing(path, "does not exist") from None
    except OSError as exc:
        raise BadInput(path, _why(exc)) from None
    try:
        return read_fd(fd, path, limit)
    finally:
        os.close(fd)


def read_fd(fd: int, path: str | os.PathLike[str], limit: int = SMALL_LIMIT) -> bytes:
    """The bytes of the regular file open at `fd` (not closed), at most `limit` of them."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(path, f"is not a regular file ({_kind(st.st_mode)})")
        if st.st_size > limit:
            raise BadInput(path, f"is {st.st_size} bytes, more than the {limit} expected")
        chunks = []
        size = 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > limit:
                raise BadInput(path, f"grew beyond the {limit} bytes expected")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise BadInput(path, _why(exc)) from None


def decode_json(data: bytes, path: str | os.PathLike[str]) -> Any:
    """Strict UTF-8 JSON; any malformation (bad bytes, syntax, NaN, nesting too deep) is
    BadInput naming `path`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(path, f"is not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise BadInput(path, "is not valid JSON (nested too deeply)") from None
    except ValueError as exc:
        raise BadInput(path, f"is not valid JSON ({exc})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_json(path: str | os.PathLike[str], limit: int = SMALL_LIMIT) -> Any:
    return decode_json(read_bounded(path, limit), path)


def read_object(path: str | os.PathLike[str], limit: int = SMALL_LIMIT) -> dict[str, Any]:
    value = read_json(path, limit)
    if not isinstance(value, dict):
        raise BadInput(path, f"is JSON {type(value).__name__}, not an object")
    return value


def read_token(path: str | os.PathLike[str]) -> str:
    """A one-line ASCII file (LATEST): its stripped content."""
    data = read_bounded(path, 4096)
    try:
        return data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise BadInput(path, "is not ASCII text") from None


def safe_relpath(rel: object) -> str | None:
    """`rel` if it is a normalised relative path that stays where it is joined (no `..`, no
    absolute path, no empty or `.` component, no NUL), else None."""
    if not isinstance(rel, str) or not rel or len(rel) > 4096 or "\0" in rel:
        return None
    if rel.startswith("/") or rel.endswith("/"):
        return None
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return rel


def safe_abspath(path: object) -> str | None:
    """`path` if it is a normalised absolute path (no `..`, `.`, `//`, NUL, trailing `/`)."""
    if not isinstance(path, str) or not path.startswith("/"):
        return None
    return path if path == "/" or safe_relpath(path[1:]) is not None else None


def open_beneath(root: Path, rel: str) -> int:
    """A read-only fd of the regular file `root/rel`, walking every component without
    following a symbolic link: a generation cannot point the agent at a file outside it.
    Raises BadInput (Missing when a component does not exist)."""
    checked = safe_relpath(rel)
    if checked is None:
        raise BadInput(root / str(rel), "is not a plain relative path inside the generation")
    parts = checked.split("/")
    try:
        dir_fd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        raise Missing(root, "does not exist") from None
    except OSError as exc:
        raise BadInput(root, _why(exc)) from None
    try:
        for part in parts[:-1]:
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                raise Missing(root / rel, "does not exist") from None
            except OSError as exc:
                raise BadInput(root / rel, _why(exc)) from None
            os.close(dir_fd)
            dir_fd = next_fd
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            raise Missing(root / rel, "does not exist") from None
        except OSError as exc:
            raise BadInput(root / rel, _why(exc)) from None
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadInput(root / rel, f"is not a regular file ({_kind(st.st_mode)})")
    os.set_blocking(fd, True)
    return fd


def walk_files(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of every non-directory entry under `root`, symlinks included
    and not followed, sorted per directory."""
    stack = [""]
    while stack:
        prefix = stack.pop()
        base = root / prefix if prefix else root
        try:
            names = sorted(os.listdir(base))
        except OSError:
            continue
        for name in names:
            rel = f"{prefix}/{name}" if prefix else name
            try:
                st = os.lstat(root / rel)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(rel)
            else:
                yield rel, st


def _why(exc: OSError) -> str:
    import errno  # noqa: PLC0415 - only on the error path

    if exc.errno == errno.ELOOP:
        return "is a symbolic link (never followed inside the store)"
    if exc.errno == errno.ENOTDIR:
        return "has a component that is not a directory"
    return exc.strerror or str(exc)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"
