"""The fault suites' summary line counts only the suite's own failures (a CI run with two
failures elsewhere printed "2 failing test(s)" under a clean agent fault suite)."""

from __future__ import annotations

import types
from pathlib import Path

from podckpt.devtools import faultsummary

ROOT = Path(__file__).resolve().parents[2]


class Reporter:
    def __init__(self, failed: list[str], errors: tuple[str, ...] = ()) -> None:
        self.config = types.SimpleNamespace(rootpath=ROOT)
        report = types.SimpleNamespace
        self.stats = {
            "failed": [report(nodeid=n) for n in failed],
            "error": [report(nodeid=n) for n in errors],
        }
        self.lines: list[str] = []

    def write_line(self, line: str) -> None:
        self.lines.append(line)


def _write(reporter: Reporter, cases: dict[str, int]) -> None:
    faultsummary.write(
        reporter,
        folder=ROOT / "tests/agent/faults",
        title="fault-injection summary",
        cases=cases,
        promise="0 damaged",
        seed=16,
        clock=faultsummary.SuiteClock(),
        notes=["a note"],
        note_title="fault note",
    )


def test_failures_elsewhere_are_not_the_suites() -> None:
    reporter = Reporter(
        ["tests/e2e/test_disruptions.py::test_x", "tests/operator/faults/test_o.py::test_y"]
    )
    _write(reporter, {"sigkill-dump": 20, "fuzz": 3})
    assert reporter.lines[0].startswith(
        "fault-injection summary: 23 cases (fuzz 3, sigkill-dump 20)"
    )
    assert ": 0 damaged [seed 16," in reporter.lines[0]
    assert reporter.lines[1] == "fault note: a note"


def test_the_suites_own_failures_and_errors_are_counted() -> None:
    reporter = Reporter(
        ["tests/agent/faults/test_fault_kill.py::test_a", "tests/e2e/test_x.py::test_b"],
        ["tests/agent/faults/test_fault_fuzz.py::test_c"],
    )
    _write(reporter, {"sigkill-dump": 1})
    assert "2 failing test(s): see above" in reporter.lines[0]
    # a sibling folder whose name starts the same is not the suite's
    assert (
        faultsummary.failed_in(
            Reporter(["tests/agent/faults2/t.py::x"]), ROOT / "tests/agent/faults"
        )
        == 0
    )


def test_nothing_is_printed_when_no_case_ran() -> None:
    reporter = Reporter([])
    _write(reporter, {})
    assert reporter.lines == []


def test_seconds_end_with_the_suites_last_test() -> None:
    """The line is printed at the session's end; a suite that ran first in a 33-minute CI run
    printed 1657 s for its own ~5 minutes."""
    reporter = Reporter([])
    clock = faultsummary.SuiteClock()
    clock.started, clock.ended = 1000.0, 1300.0
    faultsummary.write(
        reporter,
        folder=ROOT / "tests/agent/faults",
        title="fault-injection summary",
        cases={"sigkill-dump": 1},
        promise="0 damaged",
        seed=16,
        clock=clock,
    )
    assert reporter.lines[0].endswith("[seed 16, 300 s]")
