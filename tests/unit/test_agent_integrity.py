"""Checksums computed while a file is written, and verified in chunks (integrity.py)."""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import mmap
import os
import threading
import time
from pathlib import Path

import pytest

from podckpt.agent import durable, integrity
from podckpt.agent.errors import GenerationInvalidError
from podckpt.agent.integrity import CHUNK_BYTES, ImageHasher, PageVerifier
from podckpt.agent.manifest import FileEntry
from podckpt.agent.store import Store


def _chunks(data: bytes) -> list[str]:
    return [
        hashlib.sha256(data[i : i + CHUNK_BYTES]).hexdigest()
        for i in range(0, len(data), CHUNK_BYTES)
    ]


def _writer(path: Path, data: bytes, piece: int) -> threading.Thread:
    """Appends data in pieces with short pauses, as CRIU writes a page image."""

    def run() -> None:
        with path.open("ab") as out:
            for offset in range(0, len(data), piece):
                out.write(data[offset : offset + piece])
                out.flush()
                time.sleep(0.001)

    return threading.Thread(target=run)


def test_images_are_hashed_while_they_are_written(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    first = os.urandom(2 * CHUNK_BYTES + 12345)
    second = os.urandom(4096)
    hasher = ImageHasher(tmp_path, threads=2)
    hasher.start()
    writers = [
        _writer(tmp_path / "images" / "pages-1.img", first, 8 << 20),
        _writer(tmp_path / "images" / "pages-2.img", second, 4096),
    ]
    for writer in writers:
        writer.start()
    (tmp_path / "images" / "core-1.img").write_bytes(b"not a page image")
    for writer in writers:
        writer.join()
    digests = hasher.finish()
    assert set(digests) == {"images/pages-1.img", "images/pages-2.img"}
    assert digests["images/pages-1.img"].size == len(first)
    assert list(digests["images/pages-1.img"].chunks or ()) == _chunks(first)
    assert list(digests["images/pages-2.img"].chunks or ()) == _chunks(second)


def test_the_writeback_follows_what_is_written_not_what_is_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every byte of every page image is handed to the writeback, in order, while it is
    written: also when no hashing thread is free (here: none is, until CRIU is done)."""
    asked: dict[str, list[tuple[int, int]]] = {}

    def record(self: durable.Writeback, fd: int, offset: int, length: int) -> None:
        del self
        asked.setdefault(os.readlink(f"/proc/self/fd/{fd}"), []).append((offset, length))

    monkeypatch.setattr(durable.Writeback, "submit", record)
    gate = threading.Event()
    real_hash = integrity._hash_range

    def held(*args: object, **kwargs: object) -> tuple[str, int]:
        gate.wait()
        return real_hash(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(integrity, "_hash_range", held)
    (tmp_path / "images").mkdir()
    data = os.urandom(3 * integrity.WRITEBACK_STEP + 777)
    hasher = ImageHasher(tmp_path, threads=1)
    hasher.start()
    writer = _writer(tmp_path / "images" / "pages-1.img", data, 1 << 20)
    writer.start()
    writer.join()
    path = str(tmp_path / "images" / "pages-1.img")
    deadline = time.monotonic() + 10
    # all but the last step's worth, which waits for more bytes or for CRIU's end
    while sum(n for _, n in asked.get(path, ())) <= len(data) - integrity.WRITEBACK_STEP:
        assert time.monotonic() < deadline, asked  # followed while nothing was hashed
        time.sleep(0.01)
    gate.set()
    digests = hasher.finish()
    ranges = asked[path]
    assert [offset for offset, _ in ranges] == list(
        itertools.accumulate([0] + [n for _, n in ranges[:-1]])
    )
    assert sum(n for _, n in ranges) == len(data)
    assert list(digests["images/pages-1.img"].chunks or ()) == _chunks(data)


def test_writeback_never_keeps_a_descriptor(tmp_path: Path) -> None:
    """Each range holds a duplicate of its descriptor until its call is made; `close` drops
    what is still waiting, and nothing submitted afterwards is kept."""
    path = tmp_path / "f"
    path.write_bytes(os.urandom(1 << 20))
    before = len(os.listdir("/proc/self/fd"))
    writeback = durable.Writeback()
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset in range(0, 1 << 20, 64 << 10):
            writeback.submit(fd, offset, 64 << 10)
        deadline = time.monotonic() + 10
        while writeback.pending:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        writeback.close()
        writeback.submit(fd, 0, 4096)
        assert writeback.pending == 0
    finally:
        os.close(fd)
    deadline = time.monotonic() + 10
    while len(os.listdir("/proc/self/fd")) > before:  # the call in progress closes its own
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_an_empty_page_image_has_no_chunks(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "pages-1.img").write_bytes(b"")
    hasher = ImageHasher(tmp_path, threads=1)
    hasher.start()
    digest = hasher.finish()["images/pages-1.img"]
    assert (digest.size, digest.chunks) == (0, ())


def _generation(tmp_path: Path, data: bytes) -> tuple[Path, FileEntry]:
    gen = tmp_path / "gen"
    (gen / "images").mkdir(parents=True)
    (gen / "images" / "pages-1.img").write_bytes(data)
    return gen, FileEntry(len(data), "sha256", "", tuple(_chunks(data)), CHUNK_BYTES)


def test_verifier_accepts_matching_chunks_and_whole_file_entries(tmp_path: Path) -> None:
    data = os.urandom(CHUNK_BYTES + 100)
    gen, entry = _generation(tmp_path, data)
    (gen / "images" / "pages-2.img").write_bytes(b"old format")
    old = FileEntry(10, "sha256", hashlib.sha256(b"old format").hexdigest())
    entries = {"images/pages-1.img": entry, "images/pages-2.img": old}
    verifier = PageVerifier(gen, entries, threads=2).start()
    assert verifier.result() is None
    assert verifier.bytes == len(data) + 10


class _Gate:
    """A pace the test moves by hand; records each position asked and the limit then."""

    def __init__(self) -> None:
        self.limit = 0
        self.asked: list[tuple[int, int]] = []  # (position asked, limit then)
        self.criu_read = 0

    def allows(self, position: int) -> bool:
        self.asked.append((position, self.limit))
        return position <= self.limit

    def passed(self) -> int:
        return self.criu_read


def _resident(path: Path) -> int:
    """Pages of `path` in the page cache (mincore(2) on a private mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    vec = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
    with path.open("rb") as f:
        mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
        try:
            anchor = ctypes.c_char.from_buffer(mapped)
            address = ctypes.c_void_p(ctypes.addressof(anchor))
            rc = libc.mincore(address, ctypes.c_size_t(size), vec)
            del anchor
        finally:
            mapped.close()
    if rc != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    return sum(v & 1 for v in vec)


def test_a_paced_verifier_reads_no_chunk_beyond_what_the_pace_allows(tmp_path: Path) -> None:
    data = os.urandom(4 * CHUNK_BYTES + 5)
    gen, entry = _generation(tmp_path, data)
    gate = _Gate()
    verifier = PageVerifier(gen, {"images/pages-1.img": entry}, threads=2, pace=gate).start()
    for step in range(5):
        gate.limit = step * CHUNK_BYTES
        # every chunk that starts at or below the limit is read, none after it
        deadline = time.monotonic() + 10
        while verifier.bytes < min(len(data), (step + 1) * CHUNK_BYTES):
            assert time.monotonic() < deadline, (step, verifier.bytes)
            time.sleep(0.005)
        time.sleep(0.05)
        assert verifier.bytes == min(len(data), (step + 1) * CHUNK_BYTES), step
    assert verifier.result() is None
    assert any(position > limit for position, limit in gate.asked), "the pace never held it"


@pytest.mark.parametrize("criu_done", [True, False], ids=["criu-read-them", "criu-did-not"])
def test_chunks_both_readers_passed_leave_the_page_cache(tmp_path: Path, criu_done: bool) -> None:
    """What the verifier hashed and CRIU has read too goes out of the page cache at once (in a
    pod at its memory limit it would otherwise push out the pages still to be read); what CRIU
    has not read yet stays for it."""
    data = os.urandom(3 * CHUNK_BYTES)
    gen, entry = _generation(tmp_path, data)
    image = gen / "images" / "pages-1.img"
    os.sync()
    gate = _Gate()
    gate.limit = 1 << 40
    gate.criu_read = len(data) if criu_done else 0
    verifier = PageVerifier(gen, {"images/pages-1.img": entry}, threads=2, pace=gate).start()
    assert verifier.result() is None
    pages = len(data) // mmap.PAGESIZE
    if criu_done:
        assert _resident(image) < pages // 10, _resident(image)
    else:
        assert _resident(image) > pages * 9 // 10, _resident(image)


def test_a_held_verifier_is_cancelled_at_once(tmp_path: Path) -> None:
    gen, entry = _generation(tmp_path, os.urandom(2 * CHUNK_BYTES))
    gate = _Gate()
    gate.limit = -1
    verifier = PageVerifier(gen, {"images/pages-1.img": entry}, threads=2, pace=gate).start()
    time.sleep(0.05)
    started = time.monotonic()
    verifier.cancel()
    assert time.monotonic() - started < 1
    assert verifier.bytes == 0
    assert verifier.result() == "verification cancelled"


@pytest.mark.parametrize("damage", ["corrupted", "truncated", "missing"])
def test_verifier_names_the_damage(tmp_path: Path, damage: str) -> None:
    data = os.urandom(2 * CHUNK_BYTES)
    gen, entry = _generation(tmp_path, data)
    image = gen / "images" / "pages-1.img"
    if damage == "corrupted":
        with image.open("r+b") as f:
            f.seek(CHUNK_BYTES + 7)
            f.write(b"\xff\x00")
    elif damage == "truncated":
        os.truncate(image, CHUNK_BYTES)
    else:
        image.unlink()
    wake_r, wake_w = os.pipe()
    try:
        verifier = PageVerifier(gen, {"images/pages-1.img": entry}, wake_fd=wake_w).start()
        error = verifier.result()
        assert os.read(wake_r, 1) == b"v"
    finally:
        os.close(wake_r)
        os.close(wake_w)
    assert error is not None
    assert damage in error
    if damage == "corrupted":
        assert f"at byte {CHUNK_BYTES}" in error


def test_store_commit_uses_digests_computed_during_the_dump(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", "app")
    store.open()
    gen = store.begin()
    data = os.urandom(CHUNK_BYTES + 1)
    hasher = ImageHasher(gen.path, threads=2)
    hasher.start()
    (gen.images / "pages-1.img").write_bytes(data)
    (gen.images / "inventory.img").write_bytes(b"inventory")
    manifest = store.commit(gen, {"criu_version": "4.2.1"}, hasher.finish())
    on_disk = json.loads((gen.path / "manifest.json").read_text())
    assert on_disk == manifest
    pages = manifest["checksums"]["images/pages-1.img"]
    assert pages["sha256_chunks"]["digests"] == _chunks(data)
    assert manifest["checksums"]["images/inventory.img"]["sha256"] == (
        hashlib.sha256(b"inventory").hexdigest()
    )
    # Verified in full (a store check) and with the page images deferred (a restore).
    assert store.verify(gen).generation == gen.name
    checked = store.check(gen)
    store.verify_contents(gen, checked, exclude=integrity.is_page_image)
    deferred = {r: e for r, e in checked.files.items() if integrity.is_page_image(r)}
    assert set(deferred) == {"images/pages-1.img"}
    assert PageVerifier(gen.path, deferred).start().result() is None
    with (gen.images / "pages-1.img").open("r+b") as f:
        f.write(b"X")
    with pytest.raises(GenerationInvalidError, match="sha256 mismatch at byte 0"):
        store.verify(gen)
    # Deferred: the restore goes on, the verifier catches it while CRIU reads.
    store.verify_contents(gen, checked, exclude=integrity.is_page_image)
    assert "sha256 mismatch" in str(PageVerifier(gen.path, deferred).start().result())


def test_page_images_are_recognised() -> None:
    assert integrity.is_page_image("images/pages-12.img")
    assert not integrity.is_page_image("images/pagemap-12.img")
    assert not integrity.is_page_image("files/images/pages-1.img")
