"""The product's main promise: a process keeps its memory across container deaths."""

from __future__ import annotations

import pytest
from agent_harness import AgentHarness, counts, phases, stop_and_wait, wait_count

from podckpt.agent.exitcodes import CHECKPOINTED

pytestmark = pytest.mark.criu


def test_counter_continues_across_two_container_deaths(agent: AgentHarness) -> None:
    first = agent.start(["python3", "/apps/counter.py"])
    wait_count(first, 10)
    assert phases(first, "fresh-start", "ok")
    assert stop_and_wait(first) == CHECKPOINTED
    reached = counts(first)[-1]
    gen1 = agent.latest()
    assert gen1 is not None

    second = agent.start(["python3", "/apps/counter.py"])
    seen = wait_count(second, 10)
    assert seen[0] == reached + 1, f"restarted from {seen[0]} instead of {reached + 1}"
    assert seen == list(range(seen[0], seen[0] + len(seen)))
    restore = phases(second, "restore", "ok")
    assert restore
    assert restore[0]["generation"] == gen1
    assert stop_and_wait(second) == CHECKPOINTED
    reached = counts(second)[-1]

    third = agent.start(["python3", "/apps/counter.py"])
    seen = wait_count(third, 5)
    assert seen[0] == reached + 1
    assert not phases(third, "fresh-start")
    dump = phases(second, "dump", "ok")[0]
    assert dump["criu"]["frozen_time_us"] > 0
    assert dump["criu"]["pages_written"] > 0
