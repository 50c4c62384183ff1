"""The fault-injection suite (issue 16.2): the real agent and real CRIU, killed, starved of
space, fed corrupted and random input. Every case asserts no traceback, no damaged committed
generation and no crash loop; the session prints one summary line (docs/reliability.md).

Seeded: FAULT_SEED (default 16) chooses every kill point, corruption and mutation,
so a failing case is reproduced by running the same test with the same seed.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from faultkit import SEED, TALLY, Tally


@pytest.fixture
def tally() -> Tally:
    return TALLY


@pytest.fixture
def seed() -> int:
    return SEED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLY.cases:
        return
    failed = len(terminalreporter.stats.get("failed", ())) + len(
        terminalreporter.stats.get("error", ())
    )
    parts = ", ".join(f"{name} {count}" for name, count in sorted(TALLY.cases.items()))
    total = sum(TALLY.cases.values())
    verdict = (
        "0 tracebacks, 0 damaged committed generations, 0 crash loops"
        if not failed
        else f"{failed} failing test(s): see above"
    )
    terminalreporter.write_line(
        f"fault-injection summary: {total} cases ({parts}): {verdict}"
        f" [seed {SEED}, {time.monotonic() - TALLY.started:.0f} s]"
    )
