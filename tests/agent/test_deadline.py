"""The SIGTERM deadline (deadline.py): a dump that cannot finish before the kubelet's SIGKILL
is not started; the application gets its SIGTERM at once and the previous generation stays."""

from __future__ import annotations

import pytest
from agent_harness import AgentHarness, phases, stop_and_wait, wait_count

from podckpt.agent.exitcodes import CHECKPOINT_FAILED, CHECKPOINTED
from podckpt.agent.store import Store
from podckpt.api import contract
from podckpt.devtools.sandbox import Sandbox, wait_for

pytestmark = pytest.mark.criu

APP = ["python3", "/apps/pattern.py", "512", "1000"]


def _started(agent: AgentHarness, grace: str) -> tuple[Sandbox, str]:
    box = agent.start(APP, env={contract.Env.GRACE_PERIOD: grace})
    assert wait_for(lambda: "ready" in box.stdout_text(), 120), box.stderr_text()[-2000:]
    wait_count(box, 3)
    older = agent.checkpoint(box, timeout=120)  # measures this store's throughput
    return box, older


def test_a_dump_that_cannot_finish_in_the_grace_period_is_not_started(
    agent: AgentHarness,
) -> None:
    box, older = _started(agent, "1")
    measured = phases(box, "commit", "ok")[0]["throughput_bps"]
    assert stop_and_wait(box, 60) == CHECKPOINT_FAILED  # SIGTERM reached the app, no dump
    assert "exiting 0: SIGTERM" in box.stdout_text()
    skipped = phases(box, "dump", "skipped")
    assert len(skipped) == 1, box.stderr_text()[-3000:]
    line = skipped[0]
    assert line["then"] == "SIGTERM forwarded"
    assert (line["throughput"], line["bytes_per_s"]) == ("measured", measured)
    assert line["estimate_s"] > line["left_s"]
    assert line["bytes"] >= 512 << 20
    assert not phases(box, "dump", "ok")[1:], "no dump after the skip"
    # The previous generation is intact and still the one to restore; not a completion.
    assert agent.latest() == older
    assert not (agent.app_store / "COMPLETED").exists()
    store = Store(agent.app_store, "app")
    assert store.verify(store.generation(older)).generation == older


def test_a_dump_that_fits_is_taken(agent: AgentHarness) -> None:
    box, older = _started(agent, "120")
    assert stop_and_wait(box, 120) == CHECKPOINTED
    assert not phases(box, "dump", "skipped")
    assert agent.latest() != older
