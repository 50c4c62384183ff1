"""Stopped tasks stay stopped, and CRIU options per workload reach CRIU (keys and `MMC_*`
variables): `link-remap` for a file unlinked with other links, `tcp-established` for a
connection kept on the same pod IP and closed (with a phase line) where the IP is gone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from agent_harness import AgentHarness, phases, stop_and_wait, wait_count
from test_environment import RUNTIME_DEFAULT

from podckpt.agent import exitcodes
from podckpt.agent.capabilities import REQUIRED_CAPABILITIES
from podckpt.agent.exitcodes import CHECKPOINTED
from podckpt.api import contract
from podckpt.devtools.sandbox import Bind, Sandbox, wait_for

pytestmark = pytest.mark.criu

STOPPED = r"^count (\d+) child (\d+) state (\S) progress (\d+)$"
PINGPONG = r"^pingpong (\d+) port (\d+)$"


def _rows(sandbox: Sandbox, pattern: str) -> list[tuple[str, ...]]:
    return re.findall(pattern, sandbox.stdout_text(), re.MULTILINE)


def test_a_task_the_application_stopped_stays_stopped(agent: AgentHarness) -> None:
    first = agent.start(["python3", "/apps/stopped_child.py"])
    assert wait_for(lambda: len(_rows(first, STOPPED)) >= 5, 20), first.stdout_text()
    progress = int(_rows(first, STOPPED)[-1][3])
    # An on-request checkpoint continues the tree afterwards: not the stopped child.
    agent.checkpoint(first)
    seen = len(_rows(first, STOPPED))
    assert wait_for(lambda: len(_rows(first, STOPPED)) >= seen + 5, 20)
    assert {row[2] for row in _rows(first, STOPPED)} == {"T"}
    assert int(_rows(first, STOPPED)[-1][3]) == progress
    assert stop_and_wait(first) == CHECKPOINTED

    second = agent.start(["python3", "/apps/stopped_child.py"])
    assert wait_for(lambda: len(_rows(second, STOPPED)) >= 5, 20), second.stderr_text()
    rows = _rows(second, STOPPED)
    assert int(rows[0][0]) > seen, "restored, not started fresh"
    assert {row[2] for row in rows} == {"T"}, "the child the application stopped stays stopped"
    assert {int(row[3]) for row in rows} == {progress}, "and it did not run"


def test_link_remap_from_the_container_variable(agent: AgentHarness, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    argv = ["python3", "/apps/remapped_file.py", "/data"]
    binds = [Bind(volume, "/data")]
    # Without the option CRIU refuses the file; the application gets its SIGTERM.
    plain = agent.start(argv, binds=binds)
    wait_count(plain, 5)
    assert stop_and_wait(plain) == contract.ExitCode.CHECKPOINT_FAILED
    assert "link-remap" in phases(plain, "dump", "failed")[0]["error"]

    env = {"MMC_CHECKPOINT_ADVANCED_OPTIONS": "--link-remap"}
    # What the webhook gives a container that asks for link-remap (linkat(AT_EMPTY_PATH)).
    caps = sorted({*RUNTIME_DEFAULT, *REQUIRED_CAPABILITIES, "CAP_DAC_READ_SEARCH"})
    first = agent.start(argv, binds=binds, env=env, capabilities=caps)
    reached = wait_count(first, 10)[-1]
    assert stop_and_wait(first) == CHECKPOINTED
    second = agent.start(argv, binds=binds, env=env, capabilities=caps)
    assert wait_for(lambda: re.search(r"^count \d+ lines", second.stdout_text(), re.M), 20)
    rows = [tuple(map(int, r)) for r in _rows(second, r"^count (\d+) lines (\d+)$")]
    assert rows[0][0] > reached
    assert all(count == lines for count, lines in rows), "the same file, every line kept"


def test_tcp_established_keeps_a_connection_on_the_same_pod_ip(agent: AgentHarness) -> None:
    keys = {"memverge.ai/checkpoint-advanced-options": "tcp-established"}
    argv = ["python3", "/apps/tcp_pair.py", "10.77.0.9"]
    first = agent.start(argv, annotations=keys, addresses=["10.77.0.9"])
    assert wait_for(lambda: len(_rows(first, PINGPONG)) >= 10, 20), first.stdout_text()
    assert stop_and_wait(first) == CHECKPOINTED
    last, port = _rows(first, PINGPONG)[-1]

    same_ip = agent.start(argv, annotations=keys, addresses=["10.77.0.9"])
    assert wait_for(lambda: len(_rows(same_ip, PINGPONG)) >= 10, 20), same_ip.stderr_text()
    rows = _rows(same_ip, PINGPONG)
    assert int(rows[0][0]) == int(last) + 1, "the conversation goes on"
    assert {p for _, p in rows} == {port}, "on the same connection"
    assert "connection lost" not in same_ip.stdout_text()
    assert not phases(same_ip, "connections", "closed")
    assert stop_and_wait(same_ip) == CHECKPOINTED

    # Another pod IP: the connection cannot be restored; the restore closes it and says so.
    elsewhere = agent.start(argv, annotations=keys, addresses=["10.77.0.10"])
    assert wait_for(lambda: phases(elsewhere, "restore", "ok"), 20), elsewhere.stderr_text()
    closed = phases(elsewhere, "connections", "closed")
    assert closed, elsewhere.stderr_text()
    assert "tcp-established" in closed[0]["why"]
    # The restore line itself says it too: the controller's ConnectionsClosed Event.
    assert "tcp-close" in phases(elsewhere, "restore", "ok")[0]["connections_closed"]
    assert wait_for(lambda: "connection lost" in elsewhere.stdout_text(), 20)


def test_without_the_option_connections_come_back_closed(agent: AgentHarness) -> None:
    first = agent.start(["python3", "/apps/tcp_pair.py"])
    assert wait_for(lambda: len(_rows(first, PINGPONG)) >= 5, 20)
    assert stop_and_wait(first) == CHECKPOINTED
    second = agent.start(["python3", "/apps/tcp_pair.py"])
    assert wait_for(lambda: "connection lost" in second.stdout_text(), 20), second.stderr_text()
    # The client connects again to the restored listener and the numbers go on.
    assert wait_for(lambda: len(_rows(second, PINGPONG)) >= 3, 20)
    assert int(_rows(second, PINGPONG)[0][0]) > int(_rows(first, PINGPONG)[-1][0])


def test_a_refused_option_stops_the_agent_at_start_naming_it(agent: AgentHarness) -> None:
    box = agent.start(
        ["python3", "/apps/counter.py"], env={"MMC_RESTORE_ADVANCED_OPTIONS": "--root=/"}
    )
    assert box.wait(20) == exitcodes.AGENT_FAILURE
    error = phases(box, "start", "failed")[0]["error"]
    assert "MMC_RESTORE_ADVANCED_OPTIONS" in error
    assert "'root' is not an allowed CRIU option" in error
    assert "tcp-established" in error
