"""Making a generation durable without a second pass over its bytes.

A commit used to read every file back for its checksum and fsync it, one file after another:
a 1 GiB checkpoint was read twice and flushed serially. Now:

- while CRIU writes a page image, the thread that hashes it (integrity.ImageHasher) also asks
  the kernel to start writing the part already hashed to disk (`sync_file_range` with
  SYNC_FILE_RANGE_WRITE: asynchronous, nothing waits for it), so the disk works while CRIU
  still dumps;
- the commit then makes exactly the generation's own files durable, every fsync at once from a
  small pool of threads: the filesystem's journal takes concurrent fsyncs in one commit, and
  the page images' data is mostly on disk already.

Why not `syncfs`: it flushes every dirty page of the whole filesystem. A checkpoint volume on a
node's shared disk (hostPath, local-path provisioners) also carries other pods' writes, and a
node drain makes every checkpointed pod of the node dump at the same moment; with `syncfs` a
small checkpoint would wait for all of their data and could miss its own grace period.
Measured side by side in bench/agent_checkpoint.py (docs/benchmarks.md, "Agent").
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

_SYNC_FILE_RANGE_WRITE = 2
_WORKERS = 8

_libc_lock = threading.Lock()
_libc: object | None = None
_libc_loaded = False


def _load_libc() -> object | None:
    """libc through ctypes (standard library), loaded once; None where it cannot be."""
    global _libc, _libc_loaded  # noqa: PLW0603 - a process-wide cache of one handle
    with _libc_lock:
        if not _libc_loaded:
            _libc_loaded = True
            try:
                import ctypes  # noqa: PLC0415 - slow to import; only when a dump runs

                lib = ctypes.CDLL(None, use_errno=True)
                lib.sync_file_range.argtypes = (
                    ctypes.c_int,
                    ctypes.c_int64,
                    ctypes.c_int64,
                    ctypes.c_uint,
                )
                _libc = lib
            except (OSError, AttributeError, ImportError):
                _libc = None
    return _libc


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Ask the kernel to start writing [offset, offset+length) of fd to disk; never waits.
    False when the call is not available (then the commit's fsync does all the work)."""
    lib = _load_libc()
    if lib is None:
        return False
    return int(lib.sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)) == 0  # type: ignore[attr-defined]


def _fsync_path(path: Path, directory: bool) -> None:
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_all(files: Iterable[Path], dirs: Iterable[Path]) -> None:
    """fsync every file, then every directory, concurrently; raises the first OSError.

    Files first: a directory's entry is only worth flushing once the file it names is."""
    _fsync_batch(list(files), directory=False)
    _fsync_batch(list(dirs), directory=True)


def _fsync_batch(batch: list[Path], *, directory: bool) -> None:
    if len(batch) <= 1:
        for path in batch:
            _fsync_path(path, directory)
        return
    errors: list[OSError] = []
    queue = list(batch)  # popped from the end: the caller puts the largest last
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not queue or errors:
                    return
                path = queue.pop()
            try:
                _fsync_path(path, directory)
            except OSError as exc:
                with lock:
                    errors.append(exc)

    threads = [
        threading.Thread(target=worker, name="podckpt-fsync", daemon=True)
        for _ in range(min(_WORKERS, len(batch)))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
