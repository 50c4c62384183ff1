"""The agent's phase lines reach the container's termination message, newest kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from podckpt.agent import log


@pytest.fixture(autouse=True)
def _empty_history() -> Iterator[None]:
    log._recent.clear()
    yield
    log._recent.clear()


def test_termination_message_holds_the_last_phases(tmp_path: Path) -> None:
    target = tmp_path / "termination-log"
    target.touch()  # the kubelet creates it; the agent never does
    log.emit("dump", "ok", 0.2, generation="g1")
    log.emit("commit", "ok", 0.1, generation="g1")
    log.write_termination_message(str(target))
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [(r["phase"], r["outcome"], r["generation"]) for r in records] == [
        ("dump", "ok", "g1"),
        ("commit", "ok", "g1"),
    ]


def test_termination_message_fits_the_kubelet_limit_keeping_the_newest() -> None:
    for index in range(60):
        log.emit("periodic", "ok", generation=f"gen-{index:02d}", padding="x" * 100)
    message = log.termination_message()
    assert len(message.encode()) <= log.TERMINATION_LIMIT
    assert message.endswith('"gen-59","padding":"' + "x" * 100 + '"}\n')
    assert "gen-00" not in message


def test_no_file_outside_a_pod(tmp_path: Path) -> None:
    log.emit("exit", "ok")
    log.write_termination_message(str(tmp_path / "absent"))
    assert not (tmp_path / "absent").exists()
