"""The fault-injection suite (issue 16.2): the real agent and real CRIU, killed, starved of
space, fed corrupted and random input. Every case asserts no traceback, no damaged committed
generation and no crash loop; the session prints one summary line (docs/reliability.md).

Seeded: FAULT_SEED (default 16) chooses every kill point, corruption and mutation,
so a failing case is reproduced by running the same test with the same seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from faultkit import SEED, TALLY, Tally

from podckpt.devtools import faultsummary


@pytest.fixture(scope="session", autouse=True)
def _suite_clock() -> None:
    """The summary's seconds are the suite's own, from its first test (not from collection,
    which is the whole session's time when the other tiers run too)."""
    TALLY.clock.start()


@pytest.fixture
def tally() -> Tally:
    return TALLY


@pytest.fixture
def seed() -> int:
    return SEED


def pytest_runtest_teardown() -> None:
    """A test of this folder has ended: the suite's time runs at least until here."""
    TALLY.clock.lap()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    faultsummary.write(
        terminalreporter,
        folder=Path(__file__).parent,
        title="fault-injection summary",
        cases=TALLY.cases,
        promise="0 tracebacks, 0 damaged committed generations, 0 crash loops",
        seed=SEED,
        clock=TALLY.clock,
    )
