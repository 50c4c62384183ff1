"""CRIU's own zdtm static tests, under the agent and under raw CRIU with the agent's options:
the agent must pass every test raw CRIU passes, with its defaults and with the test's own
options given through the agent's keys (podckpt.devtools.zdtm: source, selection, runner,
suite; the list and the reasons: docs/conformance.md).

Real parts only: CRIU 4.2.1's test programs (Debian's source of the bundle's CRIU, built here),
real CRIU in the container-like sandbox, the agent as PID 1. Marker `criu`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from podckpt.devtools.rootfs import RootfsError, criu_version
from podckpt.devtools.sandbox import start_sandbox
from podckpt.devtools.zdtm import selection, source, suite
from podckpt.devtools.zdtm.runner import Runner

pytestmark = pytest.mark.criu

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the zdtm suite is unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def zdtm_static() -> Path:
    try:
        return source.source() / "test" / "zdtm" / "static"
    except RootfsError as exc:
        _unavailable(str(exc))
        raise


@pytest.fixture(scope="session")
def results(criu_rootfs: Path, zdtm_static: Path) -> list[suite.Result]:
    if os.geteuid() != 0:
        _unavailable("the sandbox needs root")
    assert criu_version(criu_rootfs).split(".")[:2] == source.CRIU_VERSION.split(".")[:2], (
        f"the sandbox's CRIU is {criu_version(criu_rootfs)}, the zdtm tests are"
        f" {source.CRIU_VERSION}'s: bump source.CRIU_VERSION and ORIG_SHA256"
    )
    which = os.environ.get(suite.WHICH_ENV, "ci")
    cases = selection.chosen(zdtm_static, which)
    runner = Runner(criu_rootfs, source.build(c.name for c in cases), start_sandbox)
    found = suite.run(runner, cases, workers=max(2, os.cpu_count() or 2))
    report = os.environ.get(suite.REPORT_ENV)
    if report:
        Path(report).write_text(json.dumps(suite.to_json(found), indent=1) + "\n")
    return found


def test_every_zdtm_test_is_either_run_or_left_out_with_a_reason(zdtm_static: Path) -> None:
    entries = selection.entries(zdtm_static)
    names = [e.name for e in entries]
    assert len(names) == len(set(names)) > 400
    for entry in entries:
        assert (entry.case is None) == bool(entry.reason), entry
    runnable = {e.name for e in entries if e.case is not None}
    assert set(selection.CI_TESTS) <= runnable
    assert not set(selection.CI_TESTS) & set(selection.FAILS_UNDER_RAW_CRIU)
    assert set(selection.FAILS_UNDER_RAW_CRIU) <= runnable
    assert set(selection.LEFT_OUT) <= set(names), "LEFT_OUT names tests that do not exist"


def test_the_documented_list_is_the_suites(zdtm_static: Path) -> None:
    text = DOC.read_text()
    begin, end = "<!-- zdtm-list:begin -->\n", "<!-- zdtm-list:end -->"
    documented = text[text.index(begin) + len(begin) : text.index(end)]
    assert documented == selection.listing(zdtm_static), (
        "docs/conformance.md is out of date: python -m podckpt.devtools.zdtm --list"
    )


def test_the_agent_passes_every_test_raw_criu_passes(results: list[suite.Result]) -> None:
    summary = suite.summary(results)
    columns = summary["columns"]
    assert isinstance(columns, dict)
    print(
        "\nzdtm static, passed/ran:", {c: f"{v['passed']}/{v['ran']}" for c, v in columns.items()}
    )
    behind = {
        r.case.name: {c: r.outcomes[c].detail[:300] for c in r.agent_behind()}
        for r in results
        if r.agent_behind()
    }
    assert behind == {}, f"the agent fails where raw CRIU passes: {behind}"
    assert columns["agent"]["passed"] >= columns["raw"]["passed"]
    assert columns["agent+keys"]["passed"] >= columns["raw+opts"]["passed"]


def test_every_option_a_test_needs_reaches_criu_through_the_keys(
    results: list[suite.Result],
) -> None:
    """The tests that need a CRIU option or an own IPC namespace pass under the agent once
    the keys give it (unlink_fstat03: link-remap; socket-tcp: tcp-established; sem: IPC)."""
    by_name = {r.case.name: r for r in results}
    for name in ("unlink_fstat03", "socket-tcp", "sem", "msgque", "shm"):
        if name in by_name:
            result = by_name[name]
            assert result.passed("agent+keys"), (name, result.outcomes["agent+keys"])
