"""The PID counter around a restore (pids.py): CRIU restores every task at its old PID, so what
the agent, CRIU and its helpers take must stay clear of the tree's numbers. With the tree's
highest PID in the manifest the counter goes above it before CRIU runs, and nothing is burnt
between CRIU's exit and the tree running again; without it (an older generation) the counter
stays below the application's range during the restore and is moved after it."""

from __future__ import annotations

import json
import re

import pytest
from agent_harness import AgentHarness, phases, stop_and_wait

from podckpt.agent import pids
from podckpt.agent.exitcodes import CHECKPOINTED
from podckpt.devtools.sandbox import Sandbox, wait_for

pytestmark = pytest.mark.criu

APP = ["python3", "/apps/pipe_tree.py"]
PIPE = r"^pipe (\d+) child (\d+)$"


def _tree(box: Sandbox) -> tuple[int, int]:
    found = re.search(r"^parent (\d+) child (\d+)$", box.stdout_text(), re.MULTILINE)
    assert found, box.stdout_text()[-300:]
    return int(found[1]), int(found[2])


def _lines(box: Sandbox) -> list[tuple[str, ...]]:
    return re.findall(PIPE, box.stdout_text(), re.MULTILINE)


def _dumped(agent: AgentHarness) -> tuple[int, int, dict[str, object]]:
    first = agent.start(APP)
    assert wait_for(lambda: len(_lines(first)) >= 5, 20), first.stderr_text()
    parent, child = _tree(first)
    assert stop_and_wait(first) == CHECKPOINTED
    path = agent.app_store / "generations" / str(agent.latest()) / "manifest.json"
    return parent, child, json.loads(path.read_text())


def _next_pid(box: Sandbox) -> int:
    """The PID the sandbox's namespace hands out next (a shell started in it prints its own)."""
    done = box.exec(["sh", "-c", "echo $$"])
    assert done.returncode == 0, done.stderr.decode()
    return int(done.stdout.decode())


def test_the_counter_is_above_the_tree_before_criu_and_nothing_is_burnt_after(
    agent: AgentHarness,
) -> None:
    parent, child, manifest = _dumped(agent)
    assert manifest["highest_pid"] == max(parent, child)

    second = agent.start(APP)
    assert wait_for(lambda: phases(second, "restore", "ok"), 30), second.stderr_text()
    restored = phases(second, "restore", "ok")[0]
    floor = restored["pid_floor"]
    assert floor["method"] == "already", floor
    assert floor["burned"] == 0, floor
    # The line says where the phase's time went: before CRIU, CRIU, and no burn after it.
    assert 0 < restored["before_criu_s"] + restored["criu_s"] <= restored["duration_s"], restored
    # The same tree runs on at its own PIDs, and what starts in the container now lands above it.
    assert wait_for(lambda: len(_lines(second)) >= 5, 20), second.stdout_text()[-300:]
    assert {int(c) for _, c in _lines(second)} == {child}
    assert _next_pid(second) > max(parent, child)


def test_a_generation_without_highest_pid_is_restored_as_before(agent: AgentHarness) -> None:
    """A generation an older agent wrote: the counter stays below the application's range
    while CRIU runs and is moved to PID_FLOOR after."""
    _parent, child, manifest = _dumped(agent)
    if "hmac" in manifest:
        pytest.skip("the harness signs manifests: an edited one would be refused")
    del manifest["highest_pid"]
    path = agent.app_store / "generations" / str(agent.latest()) / "manifest.json"
    path.write_text(json.dumps(manifest))

    second = agent.start(APP)
    assert wait_for(lambda: phases(second, "restore", "ok"), 30), second.stderr_text()
    floor = phases(second, "restore", "ok")[0]["pid_floor"]
    assert floor["burned"] > 0, floor
    assert floor["last_pid"] >= pids.PID_FLOOR - 1, floor
    assert wait_for(lambda: len(_lines(second)) >= 5, 20), second.stdout_text()[-300:]
    assert {int(c) for _, c in _lines(second)} == {child}
