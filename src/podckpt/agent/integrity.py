"""Checksums of a generation, computed while its bytes move instead of in a second pass.

Page images (`images/pages-N.img`) are all but a few KiB of a checkpoint. Each is hashed in
chunks of CHUNK_BYTES (SHA-256 per chunk, the list in the manifest as `sha256_chunks`), so
that several threads hash one image at once: one SHA-256 stream runs at ~1.2 GB/s on one core
here, slower than CRIU writes, and the chunks let the other core(s) share the work.

Dump. CRIU writes each page image sequentially, appending. `ImageHasher` threads follow the
images as they grow and hash every chunk as soon as CRIU has written it, from the page cache,
while CRIU still dumps; each hashed chunk's writeback is started at once (durable.Writeback,
a thread of its own: a slow disk never holds up the hashing), so the commit's fsync finds the
data mostly on disk. When CRIU exits, only the chunks written last are left; the commit hashes
the small images and the saved files itself.

Restore. Every file except the page images is verified before CRIU runs: those images steer
what CRIU does as root (files it opens and creates, sockets, the process tree). Page images
only fill the memory of tasks that CRIU leaves stopped (`--leave-stopped`), so a
`PageVerifier` hashes them while CRIU reads them (the page cache serves whichever of the two
reads a page second; readpace.py keeps the verifier close enough ahead that the page is still
there in a pod near its memory limit), and the restored tree is continued only once they
match: on a mismatch the stopped tree is killed before it ran one instruction of the
corrupted image.

Why SHA-256 and not a cheaper checksum (CRC32 runs at ~2-3.5 GB/s here): the manifest is what
the store authenticates; a CRC can be forged to match modified memory, a SHA-256 cannot, so
only a cryptographic digest makes an authenticated manifest vouch for the memory it lists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from . import durable
from .inputs import BadInput, Missing, open_beneath

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .manifest import FileEntry

CHUNK_BYTES = 16 << 20
#: The writeback of a page image is asked for in steps of at least this many bytes.
WRITEBACK_STEP = 4 << 20
_READ = 1 << 20
_IDLE_WAIT_S = 0.002
_PACE_WAIT_S = 0.002


class Pace(Protocol):
    """Whether a reader may start at a byte of the page images now, and how far CRIU has
    read them (readpace.TreeFill)."""

    def allows(self, position: int) -> bool: ...

    def passed(self) -> int: ...


def is_page_image(rel: str) -> bool:
    """A generation-relative path of a CRIU page image (`images/pages-3.img`)."""
    head, _, name = rel.rpartition("/")
    return head == "images" and name.startswith("pages-") and name.endswith(".img")


def workers() -> int:
    """Hashing threads: the CPUs this process may run on (a pod's cpuset), at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


@dataclasses.dataclass(frozen=True)
class Digest:
    """A file's size and SHA-256 (`sha256`), or its chunks' SHA-256s (`chunks`)."""

    size: int
    sha256: str | None = None
    chunks: tuple[str, ...] | None = None

    def entry(self) -> dict[str, object]:
        """The manifest's entry for this file."""
        if self.chunks is not None:
            return {
                "size": self.size,
                "sha256_chunks": {"bytes": CHUNK_BYTES, "digests": list(self.chunks)},
            }
        return {"size": self.size, "sha256": self.sha256}


def _hash_range(
    fd: int, offset: int, length: int, buf: bytearray, algorithm: str = "sha256"
) -> tuple[str, int]:
    """Digest of [offset, offset+length) of fd, and how many bytes were there."""
    digest = hashlib.new(algorithm)
    view = memoryview(buf)
    done = 0
    while done < length:
        n = os.preadv(fd, [view[: min(_READ, length - done)]], offset + done)
        if n <= 0:
            break
        digest.update(view[:n])
        done += n
    return digest.hexdigest(), done


class _Image:
    """One page image being followed: its chunks' digests as they are computed."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.digests: dict[int, str] = {}
        self.next_chunk = 0
        self.failed = False
        #: Bytes whose writeback has been asked for (from the start of the file).
        self.flushing = 0


class ImageHasher:
    """Hashes CRIU's page images while CRIU writes them (see the module's docstring).

    `start()` before CRIU runs, `finish()` once it has exited: the digests of every page image,
    keyed by generation-relative path. Anything that goes wrong in a thread only means fewer
    digests: the commit hashes what is missing itself."""

    def __init__(self, generation: Path, *, threads: int | None = None) -> None:
        self._images = generation / "images"
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._files: dict[str, _Image] = {}
        self._writeback = durable.Writeback()
        self._threads = [
            threading.Thread(target=self._work, name="podckpt-hash", daemon=True)
            for _ in range(threads or workers())
        ]
        self._follower = threading.Thread(target=self._follow, name="podckpt-follow", daemon=True)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._follower.start()

    def _follow(self) -> None:
        """Hand what CRIU has written to the writeback as soon as it is written, whether or
        not a hashing thread is free to take it (they are busy on 2 cores): the disk then
        works from CRIU's first megabytes on."""
        while True:
            done = self._done.is_set()  # read before looking: then nothing is missed
            ranges = []
            with self._lock:
                self._scan()
                for image in self._files.values():
                    try:
                        size = os.fstat(image.fd).st_size
                    except OSError:
                        continue
                    if size - image.flushing >= WRITEBACK_STEP or (done and size > image.flushing):
                        ranges.append((image.fd, image.flushing, size - image.flushing))
                        image.flushing = size
                # submitted under the lock: finish() closes the fds only after this thread
                for fd, offset, length in ranges:
                    self._writeback.submit(fd, offset, length)
            if done:
                return
            self._done.wait(_IDLE_WAIT_S)

    def _scan(self) -> None:
        try:
            names = sorted(os.listdir(self._images))
        except OSError:
            return
        for name in names:
            rel = f"images/{name}"
            if rel not in self._files and is_page_image(rel):
                try:
                    self._files[rel] = _Image(self._images / name)
                except OSError:
                    continue

    def _next_job(self) -> tuple[_Image, int, int] | None:
        """(image, chunk index, chunk length) of the next chunk CRIU has finished writing."""
        with self._lock:
            done = self._done.is_set()
            self._scan()
            for image in self._files.values():
                if image.failed:
                    continue
                try:
                    size = os.fstat(image.fd).st_size
                except OSError:
                    image.failed = True
                    continue
                start = image.next_chunk * CHUNK_BYTES
                if size >= start + CHUNK_BYTES or (done and size > start):
                    image.next_chunk += 1
                    return image, image.next_chunk - 1, min(CHUNK_BYTES, size - start)
            return None

    def _work(self) -> None:
        buf = bytearray(_READ)
        while True:
            done = self._done.is_set()  # read before looking: then nothing is missed
            job = self._next_job()
            if job is None:
                if done:
                    return
                self._done.wait(_IDLE_WAIT_S)
                continue
            image, index, length = job
            try:
                digest, got = _hash_range(image.fd, index * CHUNK_BYTES, length, buf)
            except OSError:
                image.failed = True
                continue
            if got != length:
                image.failed = True
                continue
            with self._lock:
                image.digests[index] = digest

    def finish(self) -> dict[str, Digest]:
        """Digests of the page images, complete once CRIU has exited."""
        self._done.set()
        for thread in [*self._threads, self._follower]:
            if thread.ident is not None:
                thread.join()
        self._writeback.close()
        result = {}
        for rel, image in self._files.items():
            try:
                size = os.fstat(image.fd).st_size
            finally:
                os.close(image.fd)
            count = -(-size // CHUNK_BYTES)
            if not image.failed and sorted(image.digests) == list(range(count)):
                result[rel] = Digest(size, chunks=tuple(image.digests[i] for i in range(count)))
        self._files.clear()
        return result


class PageVerifier:
    """Verifies the page images of a generation against the manifest's entries, in threads.

    `result()` waits and returns None when every image matched, else the reason. `wake_fd`,
    when given, gets one byte once the verification is over (the supervisor's loop selects on
    it); `cancel()` stops it between two reads. `pace`, when given, is asked before each chunk
    whether the verifier may read that far ahead yet (readpace.py)."""

    def __init__(
        self,
        generation: Path,
        entries: Mapping[str, FileEntry],
        *,
        wake_fd: int | None = None,
        threads: int | None = None,
        nice: int = 0,
        pace: Pace | None = None,
    ) -> None:
        self._generation = generation
        self._nice = nice
        self._pace = pace
        self._entries = dict(entries)
        self._wake_fd = wake_fd
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._errors: list[str] = []
        #: (image, fd, offset, length, digest, algorithm, position in the whole read)
        self._jobs: list[tuple[str, int, int, int, str, str, int]] = []
        self._fds: dict[str, int] = {}
        #: Hashed chunks still in the page cache: (end position, fd, offset, length).
        self._hashed: list[tuple[int, int, int, int]] = []
        self._left = 0
        self.bytes = 0
        self._finished = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name="podckpt-verify", daemon=True)
            for _ in range(threads or workers())
        ]

    def start(self) -> PageVerifier:
        self._plan()
        self._left = len(self._threads)
        for thread in self._threads:
            thread.start()
        return self

    def _plan(self) -> None:
        """Open every image and list its chunks; a missing or odd file fails now."""
        position = 0
        for rel, entry in sorted(self._entries.items()):
            try:
                fd = open_beneath(self._generation, rel)
            except Missing:
                self._errors.append(f"{rel} is missing")
                return
            except BadInput as exc:
                self._errors.append(f"{rel} {exc.problem}")
                return
            self._fds[rel] = fd
            actual = os.fstat(fd).st_size
            if actual != entry.size:
                self._errors.append(
                    f"{rel} is truncated or grown: {actual} bytes, manifest says {entry.size}"
                )
                return
            if entry.chunks is None:
                self._jobs.append((rel, fd, 0, actual, entry.digest, entry.algorithm, position))
                position += actual
                continue
            step = entry.chunk_bytes
            for index, expected in enumerate(entry.chunks):
                length = min(step, actual - index * step)
                self._jobs.append((rel, fd, index * step, length, expected, "sha256", position))
                position += length
        self._jobs.reverse()  # popped from the end: first chunk first

    def _work(self) -> None:
        buf = bytearray(_READ)
        if self._nice:
            with contextlib.suppress(OSError):  # this thread only (a TID is a PID to setpriority)
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
        try:
            while not self._cancelled.is_set():
                with self._lock:
                    if self._errors or not self._jobs:
                        return
                    held = self._pace is not None and not self._pace.allows(self._jobs[-1][-1])
                    if not held:
                        rel, fd, offset, length, expected, algorithm, position = self._jobs.pop()
                if held:
                    self._drop_behind()
                    self._cancelled.wait(_PACE_WAIT_S)
                    continue
                try:
                    digest, got = _hash_range(fd, offset, length, buf, algorithm)
                except OSError as exc:
                    self._fail(f"{rel} unreadable: {exc}")
                    return
                if got != length:
                    self._fail(f"{rel} is truncated: it ends before byte {offset + length}")
                    return
                if not hmac.compare_digest(digest, expected):
                    self._fail(f"{rel} is corrupted ({algorithm} mismatch at byte {offset})")
                    return
                with self._lock:
                    self.bytes += got
                    if self._pace is not None:
                        self._hashed.append((position + length, fd, offset, length))
                self._drop_behind()
        finally:
            with self._lock:
                self._left -= 1
                last = self._left == 0
            if last:
                self._close()

    def _fail(self, error: str) -> None:
        with self._lock:
            self._errors.append(error)

    def _drop_behind(self) -> None:
        """Take the chunks CRIU and the verifier have both read out of the page cache
        (POSIX_FADV_DONTNEED). In a pod at its memory limit, a page read by both is on the
        active list, and the cgroup's reclaim takes the pages only one of them has read yet
        (the verifier's look-ahead, or what CRIU read before the verifier) instead. Measured
        for a 1 GiB restore: the cgroup at its limit ~120k times without pacing, 48k-67k with
        pacing alone, 0-10k with the drop (docs/benchmarks.md "End to end")."""
        if self._pace is None:
            return
        passed = self._pace.passed()
        with self._lock:
            done = [chunk for chunk in self._hashed if chunk[0] <= passed]
            if not done:
                return
            self._hashed = [chunk for chunk in self._hashed if chunk[0] > passed]
        for _, fd, offset, length in done:
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)

    def _close(self) -> None:
        self._drop_behind()
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._finished.set()
        if self._wake_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake_fd, b"v")

    def cancel(self) -> None:
        self._cancelled.set()
        self._finished.wait()

    def done(self) -> bool:
        return self._finished.is_set()

    def result(self, timeout: float | None = None) -> str | None:
        if not self._finished.wait(timeout):
            return "verification did not finish"
        if self._cancelled.is_set() and not self._errors:
            return "verification cancelled"
        return self._errors[0] if self._errors else None
