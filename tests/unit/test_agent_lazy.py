"""Which restores are lazy (lazy.choose) and what the agent checks first (lazy.unavailable)."""

from __future__ import annotations

import struct
import types
from pathlib import Path

import pytest

from podckpt.agent import images, lazy
from podckpt.agent.generations import Generation
from podckpt.agent.manifest import FileEntry, Manifest


def _manifest(size: int) -> Manifest:
    files = {"images/pages-1.img": FileEntry(size, "sha256", "0" * 64)}
    return Manifest("g", 2, False, files, {})


def _ctx(privileged: bool) -> object:
    return types.SimpleNamespace(privileged=privileged)


def test_full_unless_asked_or_big(tmp_path: Path) -> None:
    gen = Generation("20261201T000000Z-000001", tmp_path)
    small, big = _manifest(1 << 20), _manifest(lazy.AUTO_LAZY_BYTES)
    ctx = _ctx(privileged=False)
    assert lazy.choose(ctx, gen, big, "full") == (False, None)  # type: ignore[arg-type]
    assert lazy.choose(ctx, gen, small, None) == (False, None)  # type: ignore[arg-type]
    chosen, why = lazy.choose(ctx, gen, small, "lazy")  # type: ignore[arg-type]
    assert not chosen
    assert "privileged mode" in str(why)


def test_a_generation_whose_lazy_restore_failed_restores_in_full(tmp_path: Path) -> None:
    gen = Generation("20261201T000000Z-000001", tmp_path)
    (tmp_path / lazy.LAZY_FAILED).write_text("x")
    chosen, why = lazy.choose(_ctx(privileged=True), gen, _manifest(1 << 30), "lazy")  # type: ignore[arg-type]
    assert not chosen
    assert why == "the last lazy restore of this generation failed"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _pagemap(*flags: int) -> bytes:
    """A pagemap image as CRIU 3.17+ writes it: the head (pages_id), then one entry per run
    (vaddr, compat_nr_pages 0, flags, nr_pages)."""
    head = _varint(1 << 3) + _varint(1)
    body = struct.pack("<I", len(head)) + head
    for n, flag in enumerate(flags):
        entry = _varint(1 << 3) + _varint(0x400000 + n * 0x10000) + _varint(2 << 3) + _varint(0)
        entry += _varint(4 << 3) + _varint(flag) + _varint(5 << 3) + _varint(16)
        body += struct.pack("<I", len(entry)) + entry
    return struct.pack("<II", images.IMG_COMMON_MAGIC, images.PAGEMAP_MAGIC) + body


PRESENT, LAZY = 4, 2


def test_a_checkpoint_has_lazy_pages_when_one_pagemap_entry_says_so(tmp_path: Path) -> None:
    (tmp_path / "pagemap-300.img").write_bytes(_pagemap(PRESENT, PRESENT))
    (tmp_path / "pagemap-shmem-9.img").write_bytes(b"not a task's pagemap")
    assert images.has_lazy_pages(tmp_path) is False
    (tmp_path / "pagemap-301.img").write_bytes(_pagemap(PRESENT, LAZY | PRESENT))
    assert images.has_lazy_pages(tmp_path) is True
    (tmp_path / "pagemap-299.img").write_bytes(_pagemap(PRESENT)[:-3])  # truncated, read first
    assert images.has_lazy_pages(tmp_path) is None
    assert images.has_lazy_pages(tmp_path / "missing") is None


def test_a_checkpoint_without_lazy_pages_is_restored_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CRIU would copy every page itself; the restore says so rather than calling it lazy."""
    monkeypatch.setattr(lazy, "unavailable", lambda ctx: None)
    gen = Generation("20261201T000000Z-000001", tmp_path)
    gen.images.mkdir()
    (gen.images / "pagemap-300.img").write_bytes(_pagemap(PRESENT, PRESENT))
    ctx, manifest = _ctx(privileged=True), _manifest(1 << 30)
    assert lazy.choose(ctx, gen, manifest, "lazy") == (False, lazy.NO_LAZY_PAGES)  # type: ignore[arg-type]
    assert lazy.choose(ctx, gen, manifest, None) == (False, lazy.NO_LAZY_PAGES)  # type: ignore[arg-type]
    (gen.images / "pagemap-301.img").write_bytes(_pagemap(LAZY | PRESENT))
    assert lazy.choose(ctx, gen, manifest, "lazy") == (True, None)  # type: ignore[arg-type]
    (gen.images / "pagemap-300.img").write_bytes(b"garbage")
    assert lazy.choose(ctx, gen, manifest, "lazy") == (True, None)  # type: ignore[arg-type]


def _may_use_userfaultfd() -> bool:
    """CAP_SYS_PTRACE in the effective set, or the node's sysctl: what the kernel checks."""
    status = Path("/proc/self/status").read_text()
    effective = int(next(x for x in status.splitlines() if x.startswith("CapEff:")).split()[1], 16)
    sysctl = Path("/proc/sys/vm/unprivileged_userfaultfd")
    return bool(effective >> 19 & 1) or (sysctl.exists() and sysctl.read_text().strip() == "1")


def test_userfaultfd_is_probed_for_a_privileged_agent() -> None:
    reason = lazy.unavailable(_ctx(privileged=True))  # type: ignore[arg-type]
    if _may_use_userfaultfd():
        assert reason is None
    else:
        assert reason is not None
        assert "CAP_SYS_PTRACE" in reason
