"""The conformance comparison: each zdtm test under raw CRIU and under the agent, with the
agent's options, and again with the test's own options (through the agent's keys).

For every case the suite runs up to four columns:

    raw        raw CRIU with the agent's options (criu.common_args)
    agent      the agent with its defaults
    raw+opts   raw CRIU with the test's .desc options (and an own IPC namespace for sem/shm/msg)
    agent+keys the agent with the same, given through checkpoint/restore-advanced-options and
               checkpoint-ipc-namespace (only for cases that need any)

and the verdict is per test: the agent must pass wherever raw CRIU passes in the same column.
Columns run in parallel workers (each run is its own pair of sandboxes).

    python -m podckpt.devtools.zdtm [--all] [--workers N] [--json FILE] [TEST...]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .runner import Case, Outcome, Runner

COLUMNS = ("raw", "agent", "raw+opts", "agent+keys")
#: `ci` (default) or `all`: which list the pytest runs (tests/conformance).
WHICH_ENV = "PODCKPT_ZDTM"
#: A file to write the pytest run's results to (JSON).
REPORT_ENV = "PODCKPT_ZDTM_REPORT"


@dataclasses.dataclass
class Result:
    case: Case
    outcomes: dict[str, Outcome]

    def passed(self, column: str) -> bool | None:
        outcome = self.outcomes.get(column)
        return None if outcome is None else outcome.passed

    def agent_behind(self) -> list[str]:
        """Columns where raw CRIU passed and the agent did not."""
        behind = []
        for raw, agent in (("raw", "agent"), ("raw+opts", "agent+keys")):
            if self.passed(raw) and not self.passed(agent):
                behind.append(agent)
        return behind


def _jobs(cases: Iterable[Case]) -> list[tuple[Case, str]]:
    jobs = []
    for case in cases:
        columns = COLUMNS if case.needs_options else COLUMNS[:2]
        jobs += [(case, column) for column in columns]
    return jobs


def run(
    runner: Runner,
    cases: Iterable[Case],
    *,
    workers: int = 2,
    work: Path | None = None,
    progress: Callable[[Case, str, Outcome], None] | None = None,
    retries: int = 2,
) -> list[Result]:
    """Every column of every case; the work directories are removed afterwards."""
    cases = list(cases)
    base = Path(tempfile.mkdtemp(prefix="zdtm-", dir=work))
    results = {case.name: Result(case, {}) for case in cases}

    def one(job: tuple[Case, str]) -> tuple[Case, str, Outcome]:
        case, column = job
        directory = Path(tempfile.mkdtemp(prefix=f"{case.name}.{column}.", dir=base))
        side = runner.raw if column.startswith("raw") else runner.agent
        try:
            outcome = side(case, directory, with_options="+" in column)
        except Exception as exc:  # noqa: BLE001 - one broken run must not stop the suite
            outcome = Outcome(False, "harness", f"{type(exc).__name__}: {exc}")
        return case, column, outcome

    def record(case: Case, column: str, outcome: Outcome) -> None:
        results[case.name].outcomes[column] = outcome
        if progress is not None:
            progress(case, column, outcome)

    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for case, column, outcome in pool.map(one, _jobs(cases)):
                record(case, column, outcome)
            # Some zdtm tests are timing-sensitive (TCP states, signals in flight): where the
            # agent failed and raw CRIU passed, the agent gets up to `retries` more runs
            # (raw CRIU keeps its one pass), and `attempts` says how many it took.
            for attempt in range(2, retries + 2):
                again = [(r.case, c) for r in results.values() for c in r.agent_behind()]
                if not again:
                    break
                for case, column, retried in pool.map(one, again):
                    record(case, column, dataclasses.replace(retried, attempts=attempt))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return list(results.values())


def summary(results: list[Result]) -> dict[str, object]:
    """Counts per column, over the tests where that column ran."""
    counts: dict[str, dict[str, int]] = {}
    for column in COLUMNS:
        ran = [r for r in results if column in r.outcomes]
        counts[column] = {"ran": len(ran), "passed": sum(1 for r in ran if r.passed(column))}
    return {
        "tests": len(results),
        "columns": counts,
        "agent_behind": {r.case.name: r.agent_behind() for r in results if r.agent_behind()},
        "agent_ahead": sorted(
            r.case.name
            for r in results
            if (r.passed("agent") and not r.passed("raw"))
            or (r.passed("agent+keys") and not r.passed("raw+opts"))
        ),
    }


def to_json(results: list[Result]) -> dict[str, object]:
    return {
        "summary": summary(results),
        "tests": {r.case.name: {c: o.as_dict() for c, o in r.outcomes.items()} for r in results},
    }


def main(argv: list[str] | None = None) -> int:
    from podckpt.devtools.rootfs import criu_rootfs  # noqa: PLC0415 - heavy, CLI only
    from podckpt.devtools.sandbox import start_sandbox  # noqa: PLC0415

    from . import selection, source  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m podckpt.devtools.zdtm")
    parser.add_argument("tests", nargs="*", help="test names (default: the CI list)")
    parser.add_argument("--all", action="store_true", help="every runnable test")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--list", action="store_true", help="print every test: run or not, and why (markdown)"
    )
    args = parser.parse_args(argv)
    static = source.source() / "test" / "zdtm" / "static"
    if args.list:
        sys.stdout.write(selection.listing(static))
        return 0
    runnable = {c.name: c for c in selection.chosen(static, "all")}
    if args.tests:
        cases = [runnable[n] for n in args.tests]
    else:
        cases = selection.chosen(static, "all" if args.all else "ci")
    runner = Runner(criu_rootfs(), source.build(runnable), start_sandbox)
    started = time.monotonic()

    def show(case: Case, column: str, outcome: Outcome) -> None:
        verdict = "PASS" if outcome.passed else f"fail at {outcome.stage}"
        print(f"{case.name:28s} {column:11s} {verdict:18s} {outcome.seconds:6.2f}s"
              f"  {outcome.detail[:120]!r}" if not outcome.passed else
              f"{case.name:28s} {column:11s} {verdict:18s} {outcome.seconds:6.2f}s",
              flush=True)  # fmt: skip

    results = run(runner, cases, workers=args.workers, progress=show)
    report = to_json(results)
    report["summary"]["seconds"] = round(time.monotonic() - started, 1)  # type: ignore[index]
    print(json.dumps(report["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if report["summary"]["agent_behind"] else 0  # type: ignore[index]


if __name__ == "__main__":
    sys.exit(main())
