"""The page verifier's pace (readpace.py) measured on real processes: the memory a tree fills."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from podckpt.agent.readpace import TreeFill

# A parent and its forked child; each fills 32 MiB more on SIGUSR1, as CRIU fills the memory
# of each task it restores.
_TREE = """
import os, signal, sys, time
held = []
def grow(*_):
    held.append(b"\\x01" * (32 << 20))
signal.signal(signal.SIGUSR1, grow)
# each says it is ready: a signal to a child still in os.fork() would be dropped
os.write(1, b"%s %d\\n" % (b"kid" if os.fork() == 0 else b"parent", os.getpid()))
while True:
    time.sleep(0.01)  # not signal.pause(): a signal just before it would wait for the next
"""

MIB = 1 << 20


@pytest.fixture
def tree() -> Iterator[tuple[int, int]]:
    parent = subprocess.Popen([sys.executable, "-c", _TREE], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    with parent.stdout:
        ready = dict(parent.stdout.readline().split() for _ in range(2))
    kid = int(ready["kid"])
    try:
        yield parent.pid, kid
    finally:
        for pid in (kid, parent.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.wait()


def _until(check: TreeFill, position: int, timeout: float = 10) -> float:
    started = time.monotonic()
    while not check.allows(position):
        assert time.monotonic() - started < timeout, check.summary()
        time.sleep(0.005)
    return time.monotonic() - started


def test_memory_filled_by_the_root_and_its_descendants_moves_the_pace(
    tree: tuple[int, int],
) -> None:
    parent, kid = tree
    fill = TreeFill(parent, lead=0, stall_s=30)
    assert not fill.allows(1)  # first sight: what is resident now is the baseline
    os.kill(kid, signal.SIGUSR1)
    _until(fill, 30 * MIB)
    assert fill.filled < 40 * MIB
    os.kill(parent, signal.SIGUSR1)
    _until(fill, 62 * MIB)
    assert not fill.allows(90 * MIB)
    assert fill.summary()["ended"] is None
    assert fill.waits >= 1


def test_a_lead_lets_the_reader_that_far_ahead(tree: tuple[int, int]) -> None:
    parent, _ = tree
    fill = TreeFill(parent, lead=8 * MIB, stall_s=30)
    assert fill.allows(8 * MIB)
    assert not fill.allows(8 * MIB + 1)


def test_a_measure_that_stops_growing_ends_the_pacing(tree: tuple[int, int]) -> None:
    parent, kid = tree
    fill = TreeFill(parent, lead=0, stall_s=0.2, start_s=30)
    assert not fill.allows(1 << 40)
    time.sleep(0.4)
    assert not fill.allows(1 << 40), "stalled before it ever grew"
    os.kill(kid, signal.SIGUSR1)
    _until(fill, 30 * MIB)
    waited = _until(fill, 1 << 40, timeout=5)
    assert 0.1 < waited < 2
    assert fill.ended == "stalled"


def test_a_measure_that_never_grows_ends_the_pacing() -> None:
    fill = TreeFill(2**22 + 12345, lead=0, stall_s=0.1, start_s=0.3)  # never forked
    assert not fill.allows(1 << 40)
    waited = _until(fill, 1 << 40, timeout=5)
    assert 0.2 < waited < 2
    assert fill.ended == "never grew"


def test_a_tree_not_forked_yet_holds_the_reader_until_released() -> None:
    fill = TreeFill(2**22 + 12345, lead=4 * MIB, stall_s=30)  # above pid_max: never forked
    assert fill.allows(4 * MIB)
    assert not fill.allows(4 * MIB + 1)
    fill.release()
    assert fill.allows(1 << 40)
    assert fill.summary() == {"ended": "released", "waits": 1, "filled_mib": 0.0}
