"""Bad input to `podckpt-agent run`: each a one-line error naming the problem, exit code 200.

These run the real command on the host; they fail before any process is started, so they need
neither root nor CRIU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from podckpt.agent import exitcodes
from podckpt.agent.criu import parse_stats, parse_version
from podckpt.api import format_downward_text

SRC = Path(__file__).resolve().parents[2] / "src"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podckpt.agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(SRC), **(env or {})},
    )


def _error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("podckpt-agent: error: ")
    return lines[0]


@pytest.fixture
def fake_criu(tmp_path: Path) -> Path:
    path = tmp_path / "criu"
    path.write_text("#!/bin/sh\necho 'Version: 4.1.1'\n")
    path.chmod(0o755)
    return path


def test_help_documents_the_reserved_exit_codes() -> None:
    done = _run("run", "--help")
    assert done.returncode == 0
    assert "200" in done.stdout
    assert "201" in done.stdout
    assert "128+S" in done.stdout


def test_missing_argv(tmp_path: Path) -> None:
    done = _run("run", "--store", str(tmp_path / "s"), "--")
    assert done.returncode == exitcodes.AGENT_FAILURE
    assert "missing the application's command" in _error_line(done)


def test_malformed_key_names_the_key(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    labels.write_text(format_downward_text({"memverge.ai/checkpoint-mode": "yes please"}))
    done = _run("run", "--labels-file", str(labels), "--", "true")
    assert done.returncode == exitcodes.AGENT_FAILURE
    line = _error_line(done)
    assert "memverge.ai/checkpoint-mode" in line
    assert "yes please" in line


def test_malformed_downward_file(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    labels.write_text("no equals sign here\n")
    done = _run("run", "--labels-file", str(labels), "--", "true")
    assert done.returncode == exitcodes.AGENT_FAILURE
    assert str(labels) in _error_line(done)


def _dormant(tmp_path: Path) -> list[str]:
    """A dormant agent (checkpoint-mode false) needs no CRIU: the store is still opened."""
    labels = tmp_path / "labels"
    labels.write_text(format_downward_text({"memverge.ai/checkpoint-mode": "false"}))
    return ["--labels-file", str(labels)]


def _records(done: subprocess.CompletedProcess[str], phase: str) -> list[dict[str, object]]:
    return [
        r
        for r in (json.loads(line) for line in done.stderr.splitlines() if line.startswith("{"))
        if r["phase"] == phase
    ]


@pytest.mark.parametrize(
    ("meta", "why"),
    [
        ('{"layout": 42, "container": "app"}', "unknown layout version 42"),
        ('{"layout": 1, "container": "web"}', "belongs to container 'web', not 'app'"),
    ],
)
def test_unusable_store_starts_the_application_without_checkpoints(
    tmp_path: Path, meta: str, why: str
) -> None:
    """A store written by another podckpt release or for another container is left as it is
    and never crash-loops the container (exit 200 at every start): the application starts
    fresh, and the log line (a Warning event) says why (issue 14.5)."""
    store = tmp_path / "app"
    (store / "generations").mkdir(parents=True)
    (store / "store.json").write_text(meta)
    done = _run("run", "--store", str(store), *_dormant(tmp_path), "--", "sh", "-c", "exit 7")
    assert done.returncode == 7, done.stderr
    assert "Traceback" not in done.stderr
    (unusable,) = _records(done, "store")
    assert unusable["outcome"] == "unusable"
    assert why in str(unusable["error"])
    assert str(store / "store.json") in str(unusable["error"])
    assert (store / "store.json").read_text() == meta, "left exactly as it was"


def test_too_old_criu_is_an_error_at_start(tmp_path: Path, fake_criu: Path) -> None:
    done = _run(
        "run", "--store", str(tmp_path / "app"), "--", "true", env={"PODCKPT_CRIU": str(fake_criu)}
    )
    assert done.returncode == exitcodes.AGENT_FAILURE
    line = _error_line(done)
    assert "CRIU 4.1.1" in line
    assert ">= 4.2" in line


def test_missing_criu_is_an_error_at_start(tmp_path: Path) -> None:
    done = _run(
        "run",
        "--store",
        str(tmp_path / "app"),
        "--",
        "true",
        env={"PODCKPT_CRIU": str(tmp_path / "nope")},
    )
    assert done.returncode == exitcodes.AGENT_FAILURE
    assert "PODCKPT_CRIU" in _error_line(done)


def test_dormant_agent_without_criu_runs_the_app(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    labels.write_text(format_downward_text({"memverge.ai/checkpoint-mode": "false"}))
    done = _run(
        "run",
        "--store",
        str(tmp_path / "app"),
        "--labels-file",
        str(labels),
        "--",
        "sh",
        "-c",
        "exit 5",
        env={"PODCKPT_CRIU": str(tmp_path / "nope")},
    )
    assert done.returncode == 5, done.stderr
    assert '"dormant"' in done.stderr


def test_checkpoint_without_a_running_agent() -> None:
    done = _run("checkpoint", "--container", "nobody-here")
    assert done.returncode == exitcodes.AGENT_FAILURE
    assert "cannot talk to the agent" in done.stderr


def test_parse_version_and_stats() -> None:
    assert parse_version("Version: 4.2.1\nGitID: v4.2.1\n") == (4, 2, 1)
    assert parse_version("Version: 4.2\n") == (4, 2, 0)
    assert parse_version("garbage") is None
    stats = parse_stats(
        "Displaying dump stats:\nFreezing time: 227 us\nFrozen time: 16607 us\n"
        "Memory pages scanned: 775 (0x307)\nMemory pages written: 698 (0x2ba)\n"
    )
    assert stats == {
        "freezing_time_us": 227,
        "frozen_time_us": 16607,
        "pages_scanned": 775,
        "pages_written": 698,
    }
