"""Making a generation durable without a second pass over its bytes.

A commit used to read every file back for its checksum and fsync it, one file after another:
a 1 GiB checkpoint was read twice and flushed serially. Now:

- while CRIU writes a page image, each chunk the hashing threads (integrity.ImageHasher) have
  hashed is handed to a thread of its own (`Writeback`) that asks the kernel to start writing
  it to disk (`sync_file_range` with SYNC_FILE_RANGE_WRITE), so the disk works while CRIU
  still dumps. Not from the hashing threads themselves: SYNC_FILE_RANGE_WRITE blocks while
  the device's queue is full, and on a disk slower than CRIU (measured: an AMD EPYC machine
  whose disk takes 327 ms to sync 256 MiB) the hashing fell behind CRIU by ~0.2 s, which the
  checkpoint then waited for;
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


class Writeback:
    """Starts the writeback of file ranges, one after another, in a thread of its own (see the
    module's docstring): `submit` never waits for the disk. Each range holds a duplicate of its
    file descriptor until its call is made, so the caller may close its own at any time.
    `close` drops what has not been started (the commit's fsync writes it anyway) and does not
    wait for the call in progress."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: list[tuple[int, int, int]] = []
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, fd: int, offset: int, length: int) -> None:
        try:
            dup = os.dup(fd)  # non-inheritable: CRIU and the application never see it
        except OSError:
            return
        with self._cond:
            if self._closed:
                os.close(dup)
                return
            self._pending.append((dup, offset, length))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="podckpt-writeback", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                fd, offset, length = self._pending.pop(0)
            try:
                started = start_writeback(fd, offset, length)
            finally:
                os.close(fd)
            if not started:  # no sync_file_range here: the commit's fsync does it all
                self.close()
                return

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for fd, _, _ in self._pending:
                os.close(fd)
            self._pending.clear()
            self._cond.notify()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)


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
