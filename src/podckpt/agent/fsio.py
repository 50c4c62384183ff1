"""Writing the store safely: atomic replacement, fsync, private modes, removal, hashing.

Every file the agent creates in the store is 0600 and every directory 0700, owned by root
(docs/security.md "Checkpoints at rest"); nothing is ever written through a symbolic link.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
_CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write-temp, fsync, rename, fsync the directory: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover (or a planted symlink) is never written through
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def private_dir(path: Path) -> None:
    """Create `path` 0700, or tighten an existing directory to 0700 (stores written by
    podckpt 0.1.0 were 0755)."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise
        if stat.S_IMODE(st.st_mode) != DIR_MODE:
            os.chmod(path, DIR_MODE)
    else:
        os.chmod(path, DIR_MODE)  # whatever the umask


def rmtree(path: Path) -> None:
    import shutil  # noqa: PLC0415 - rarely needed, and not before the application starts

    if path.is_symlink():
        with contextlib.suppress(OSError):
            path.unlink()
        return
    shutil.rmtree(path, ignore_errors=True)


def hash_file(path: Path, *, fsync: bool = False, algorithm: str = "sha256") -> tuple[int, str]:
    """Size and digest of a file; optionally fsync it while it is open anyway."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return hash_fd(fd, fsync=fsync, algorithm=algorithm)
    finally:
        os.close(fd)


def hash_fd(fd: int, *, fsync: bool = False, algorithm: str = "sha256") -> tuple[int, str]:
    import hashlib  # noqa: PLC0415 - not needed before the application starts

    digest = hashlib.new(algorithm)
    size = 0
    while chunk := os.read(fd, _CHUNK):
        digest.update(chunk)
        size += len(chunk)
    if fsync:
        os.fsync(fd)
    return size, digest.hexdigest()


def secure(fd: int, mode: int) -> None:
    """Owned by root, `mode`. CRIU running as the application's user (asuser.py) created its
    images as that user; without CAP_CHOWN/CAP_FOWNER they stay so, which is harmless: the
    store's own directories are root's and 0700, so nobody else can reach them."""
    st = os.fstat(fd)
    with contextlib.suppress(PermissionError):
        if (st.st_uid, st.st_gid) != (0, 0) and os.geteuid() == 0:
            os.fchown(fd, 0, 0)
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
