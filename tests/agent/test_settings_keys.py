"""The keys that steer restore: restore-policy, checkpoint-diagnosis, irmap-scan-paths."""

from __future__ import annotations

import pytest
from agent_harness import AgentHarness, phases, stop_and_wait, wait_count
from test_environment import RUNTIME_DEFAULT

from podckpt.agent import exitcodes
from podckpt.agent.capabilities import REQUIRED_CAPABILITIES
from podckpt.agent.exitcodes import CHECKPOINT_FAILED, CHECKPOINTED
from podckpt.devtools.sandbox import wait_for

pytestmark = pytest.mark.criu

COUNTER = ["python3", "/apps/counter.py"]


def _checkpointed(agent: AgentHarness, annotations: dict[str, str] | None = None) -> str:
    box = agent.start(COUNTER, annotations=annotations)
    wait_count(box, 5)
    assert stop_and_wait(box) == CHECKPOINTED
    latest = agent.latest()
    assert latest is not None
    return latest


def test_strict_policy_fails_instead_of_starting_fresh(agent: AgentHarness) -> None:
    strict = {"memverge.ai/restore-policy": "strict"}
    generation = _checkpointed(agent, strict)
    manifest = agent.app_store / "generations" / generation / "manifest.json"
    manifest.write_text(manifest.read_text()[:50])  # torn manifest
    box = agent.start(COUNTER, annotations=strict)
    assert box.wait(30) == exitcodes.RESTORE_FAILURE
    assert "count" not in box.stdout_text()
    assert "strict" in phases(box, "start", "failed")[0]["error"]
    # The next start fails the same way, quickly: a FAILED generation is never retried.
    again = agent.start(COUNTER, annotations=strict)
    assert again.wait(30) == exitcodes.RESTORE_FAILURE
    assert not phases(again, "restore", "failed")


def test_fresh_policy_never_restores(agent: AgentHarness) -> None:
    _checkpointed(agent)
    box = agent.start(COUNTER, annotations={"memverge.ai/restore-policy": "fresh"})
    assert wait_count(box, 3)[0] == 1
    assert phases(box, "restore", "skipped")[0]["why"] == "restore-policy is fresh"


def test_diagnosis_keeps_images_and_logs_after_restore(agent: AgentHarness) -> None:
    diagnosis = {"memverge.ai/checkpoint-diagnosis": "true"}
    generation = _checkpointed(agent, diagnosis)
    box = agent.start(COUNTER, annotations=diagnosis)
    assert wait_for(lambda: phases(box, "restore", "ok"), 20)
    kept = agent.app_store / "generations" / generation
    assert (kept / "RESTORED").exists()
    assert (kept / "dump.log").stat().st_size > 0
    assert (kept / "restore.log").stat().st_size > 0
    assert list((kept / "images").glob("pages-*.img"))
    box.destroy()


def test_without_diagnosis_a_restored_generation_is_removed(agent: AgentHarness) -> None:
    generation = _checkpointed(agent)
    box = agent.start(COUNTER)
    assert wait_for(lambda: phases(box, "restore", "ok"), 20)
    gone = agent.app_store / "generations" / generation
    assert wait_for(lambda: not gone.exists(), 20)


def test_irmap_scan_paths_let_an_inotify_watch_survive(agent: AgentHarness) -> None:
    caps = sorted({*RUNTIME_DEFAULT, *REQUIRED_CAPABILITIES})  # no CAP_DAC_READ_SEARCH
    argv = ["python3", "/apps/inotify_app.py", "/srv"]
    # Without the key CRIU cannot find the watched directory by its handle: the dump fails,
    # and the application still gets its SIGTERM.
    plain = agent.start(argv, capabilities=caps)
    assert wait_for(lambda: "watching" in plain.stdout_text(), 20)
    assert stop_and_wait(plain) == CHECKPOINT_FAILED
    assert phases(plain, "exit", "not-checkpointed")[0]["app_code"] == 128 + 15
    assert "fsnotify" in phases(plain, "dump", "failed")[0]["error"]

    keys = {"memverge.ai/irmap-scan-paths": "/srv"}
    first = agent.start(argv, annotations=keys, capabilities=caps)
    assert wait_for(lambda: "watching" in first.stdout_text(), 20)
    first.exec(["touch", "/srv/before"])
    assert wait_for(lambda: "created before" in first.stdout_text(), 10)
    assert stop_and_wait(first) == CHECKPOINTED, first.stderr_text()
    second = agent.start(argv, annotations=keys, capabilities=caps)
    assert wait_for(lambda: phases(second, "restore", "ok"), 20), second.stderr_text()
    second.exec(["touch", "/srv/after"])
    assert wait_for(lambda: "created after" in second.stdout_text(), 10)
    assert "watching" not in second.stdout_text()
