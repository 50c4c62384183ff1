"""The SIGTERM deadline: does a dump fit into what is left of the grace period (deadline.py)?"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from podckpt.agent import deadline
from podckpt.agent.deadline import Throughput
from podckpt.agent.log import Timer
from podckpt.agent.store import Store


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30", 30.0), ("4.5", 4.5), ("", None), ("0", None), ("-3", None), ("soon", None)],
)
def test_grace_period_from_the_webhook(text: str, expected: float | None) -> None:
    assert deadline.grace_period({deadline.GRACE_ENV: text}) == expected


def test_memory_to_dump_reads_the_process_anonymous_memory() -> None:
    block = bytearray(64 << 20)
    block[::4096] = b"\x01" * (len(block) // 4096)
    assert deadline.memory_to_dump([os.getpid()]) >= 64 << 20
    assert deadline.memory_to_dump([2**22 + 12345]) == 0  # no such process: nothing to dump
    del block


def test_a_dump_that_fits_and_one_that_does_not() -> None:
    now = time.monotonic()
    me = [os.getpid()]
    size = deadline.memory_to_dump(me)
    fast = Throughput(10 << 30, "measured")
    fits = deadline.decide(me, grace_s=30, sigterm_at=now, throughput=fast, now=now + 1)
    assert fits.fits
    assert fits.left_s == pytest.approx(29)
    slow = Throughput(max(1, size // 100), "measured")  # ~100 s for this process
    late = deadline.decide(me, grace_s=30, sigterm_at=now, throughput=slow, now=now)
    assert not late.fits
    assert late.estimate_s > late.left_s
    assert late.as_dict()["throughput"] == "measured"
    assumed = deadline.decide(me, grace_s=30, sigterm_at=now, throughput=None, now=now)
    assert assumed.throughput == Throughput(deadline.ASSUMED_BYTES_PER_S, "assumed")


def test_commit_records_the_measured_throughput(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", "app")
    store.open()
    gen = store.begin()
    moving = Timer()
    (gen.images / "pages-1.img").write_bytes(b"x" * 4096)
    manifest = store.commit(gen, {}, None, moving)
    measured = deadline.from_manifest(manifest)
    assert measured is not None
    assert measured.source == "measured"
    assert manifest["throughput"]["bytes"] == manifest["total_bytes"]
    assert deadline.from_manifest({"throughput": {"bytes_per_s": "fast"}}) is None
    assert deadline.from_manifest({}) is None
