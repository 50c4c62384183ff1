"""The one line a fault-injection suite prints at the end of a pytest session (the agent's,
tests/agent/faults, and the operator's, tests/operator/faults): cases per scenario, and
either the suite's promise or how many of *its own* tests failed. A failure elsewhere in the
session is not the suite's: counting every failure of the run made a clean suite say it had
failed."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


class SuiteClock:
    """A suite's own seconds: from its first test (`start`) to the end of its last one (`lap`
    after each). The summary line is printed at the session's end, after the other tiers have
    run too: measured from collection, or up to the printing, CI showed 1657 s for the agent
    suite's few minutes."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.ended: float | None = None

    def start(self) -> None:
        self.started, self.ended = time.monotonic(), None

    def lap(self) -> None:
        self.ended = time.monotonic()

    @property
    def seconds(self) -> float:
        return (self.ended if self.ended is not None else time.monotonic()) - self.started


def failed_in(terminalreporter: Any, folder: Path) -> int:
    """Failed or erroring tests of this session whose file is under `folder`."""
    root = Path(terminalreporter.config.rootpath)
    prefix = folder.resolve().relative_to(root.resolve()).as_posix() + "/"
    reports = [*terminalreporter.stats.get("failed", ()), *terminalreporter.stats.get("error", ())]
    return sum(1 for r in reports if getattr(r, "nodeid", "").startswith(prefix))


def write(
    terminalreporter: Any,
    *,
    folder: Path,
    title: str,
    cases: Mapping[str, int],
    promise: str,
    seed: int,
    clock: SuiteClock,
    checked: str = "",
    notes: Iterable[str] = (),
    note_title: str = "",
) -> None:
    """Print the suite's summary line (nothing when none of its cases ran), then its notes."""
    if not cases:
        return
    failed = failed_in(terminalreporter, folder)
    parts = ", ".join(f"{name} {count}" for name, count in sorted(cases.items()))
    verdict = promise if not failed else f"{failed} failing test(s): see above"
    terminalreporter.write_line(
        f"{title}: {sum(cases.values())} cases ({parts}){checked}: {verdict}"
        f" [seed {seed}, {clock.seconds:.0f} s]"
    )
    for note in notes:
        terminalreporter.write_line(f"{note_title}: {note}")
