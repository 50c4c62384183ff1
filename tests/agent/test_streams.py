"""Standard streams of any kind: a terminal (`tty: true`, `kubectl run -it`) that the
application owns before and after a restore, and stdout/stderr as a file on a mount the
container cannot see. (Pipes and the runtime's /dev/null are what every other test uses.)"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from agent_harness import AgentHarness, counts, phases, stop_and_wait, wait_count

from podckpt.agent.exitcodes import CHECKPOINTED
from podckpt.devtools.sandbox import Sandbox, wait_for

pytestmark = pytest.mark.criu

OWNED = "isatty True controlling yes foreground yes"


def _text(sandbox: Sandbox) -> str:
    return sandbox.stdout_text().replace("\r\n", "\n")


def test_a_terminal_is_the_applications_before_and_after_a_restore(agent: AgentHarness) -> None:
    argv = ["python3", "/apps/terminal_app.py"]
    first = agent.start(argv, tty=True)
    assert wait_for(lambda: OWNED in _text(first), 20), _text(first)
    first.type(b"hello\n")
    assert wait_for(lambda: "typed hello" in _text(first), 20), _text(first)
    reached = wait_count(first, 10)[-1]
    assert stop_and_wait(first) == CHECKPOINTED, _text(first)

    second = agent.start(argv, tty=True)
    assert wait_for(lambda: phases(second, "restore", "ok"), 20), _text(second)
    assert wait_count(second, 5)[0] > reached
    second.signal(signal.SIGUSR1)  # forwarded by the agent: the application reports again
    assert wait_for(lambda: OWNED in _text(second), 20), _text(second)
    second.type(b"again\n")
    assert wait_for(lambda: "typed again" in _text(second), 20), _text(second)
    assert stop_and_wait(second) == CHECKPOINTED


def test_a_terminal_application_is_not_restored_onto_pipes(agent: AgentHarness) -> None:
    """A terminal is restored as a terminal (CRIU makes it the session's controlling one); a
    container without one starts fresh, saying why, instead of a cryptic CRIU failure."""
    argv = ["python3", "/apps/terminal_app.py"]
    first = agent.start(argv, tty=True)
    wait_count(first, 10)
    assert stop_and_wait(first) == CHECKPOINTED
    second = agent.start(argv)  # no terminal this time: the new container's pipes
    assert wait_for(lambda: len(counts(second)) >= 5, 20), second.stderr_text()
    assert counts(second)[0] == 1
    refused = phases(second, "restore", "refused")
    assert "dumped with a terminal on fd 0 (tty: true)" in refused[0]["why"]


def test_stdout_on_a_mount_the_container_cannot_see(agent: AgentHarness, tmp_path: Path) -> None:
    argv = ["python3", "/apps/counter.py"]
    first = agent.start(argv, stdout_file=tmp_path / "first.log")
    wait_count(first, 10)
    assert stop_and_wait(first) == CHECKPOINTED, first.stdout_text()
    reached = counts(first)[-1]
    second = agent.start(argv, stdout_file=tmp_path / "second.log")
    assert wait_for(lambda: len(counts(second)) >= 5, 20), second.stdout_text()
    assert counts(second)[0] == reached + 1
    assert re.search(r"^count 1$", second.stdout_text(), re.M) is None
