"""What happens around the application: its exit code, labels changed live, its own exit,
files named in checkpoint-files, periodic and on-request checkpoints."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest
from agent_harness import MODE, AgentHarness, counts, phases, stop_and_wait, wait_count

from podckpt.agent.exitcodes import CHECKPOINTED
from podckpt.devtools.sandbox import wait_for

pytestmark = pytest.mark.criu

EXIT_APP = ["python3", "/apps/exit_on_signal.py"]


def test_exit_code_after_restore_is_the_agents(agent: AgentHarness) -> None:
    first = agent.start(EXIT_APP)
    wait_count(first, 5)
    assert stop_and_wait(first) == CHECKPOINTED
    second = agent.start(EXIT_APP)
    assert wait_for(lambda: phases(second, "restore", "ok"), 20)
    wait_count(second, 3)
    second.signal(signal.SIGUSR1)  # forwarded by the agent; the application exits with 7
    assert second.wait(20) == 7
    assert "exiting 7: SIGUSR1" in second.stdout_text()
    assert (agent.app_store / "COMPLETED").exists()
    assert phases(second, "exit", "application-exited")[0]["code"] == 7


def test_signal_death_is_128_plus_signal(agent: AgentHarness) -> None:
    box = agent.start(["python3", "/apps/counter.py"])
    wait_count(box, 3)
    box.signal(signal.SIGHUP)  # forwarded; counter.py has no handler and dies of it
    assert box.wait(20) == 128 + signal.SIGHUP
    assert phases(box, "exit", "application-exited")[0]["code"] == 128 + signal.SIGHUP


def test_label_removed_live_means_no_dump_and_sigterm_for_the_app(agent: AgentHarness) -> None:
    box = agent.start(EXIT_APP, labels={MODE: "true"})
    wait_count(box, 5)
    agent.set_labels({})  # kubectl label pod P memverge.ai/checkpoint-mode-
    assert stop_and_wait(box) == 0
    assert "exiting 0: SIGTERM" in box.stdout_text()
    assert agent.latest() is None
    assert phases(box, "sigterm", "forwarded")[0]["checkpoint_mode"] is False
    assert not phases(box, "dump")


def test_label_added_live_turns_checkpointing_on(agent: AgentHarness) -> None:
    box = agent.start(EXIT_APP, labels={MODE: "false"})
    wait_count(box, 5)
    agent.set_labels({MODE: "true"})
    assert stop_and_wait(box) == CHECKPOINTED
    assert "exiting" not in box.stdout_text()
    assert agent.latest() is not None
    second = agent.start(EXIT_APP, labels={MODE: "true"})
    assert wait_for(lambda: phases(second, "restore", "ok"), 20)


def test_invalid_live_label_keeps_the_last_valid_setting(agent: AgentHarness) -> None:
    box = agent.start(EXIT_APP, labels={MODE: "true"})
    wait_count(box, 5)
    agent.set_labels({MODE: "yes please"})
    assert stop_and_wait(box) == CHECKPOINTED
    assert agent.latest() is not None
    invalid = phases(box, "settings", "invalid")
    assert invalid
    assert MODE in invalid[0]["error"]


def test_app_exiting_by_itself_makes_the_next_start_fresh(agent: AgentHarness) -> None:
    box = agent.start(["python3", "/apps/exit_on_signal.py", "40"])
    wait_count(box, 5)
    generation = agent.checkpoint(box)  # a checkpoint exists, but the app then finishes
    assert agent.latest() == generation
    assert box.wait(30) == 0
    assert "done by itself" in box.stdout_text()
    assert (agent.app_store / "COMPLETED").exists()

    second = agent.start(EXIT_APP)
    assert wait_count(second, 3)[0] == 1
    assert phases(second, "restore", "skipped")
    assert phases(second, "fresh-start", "ok")
    assert stop_and_wait(second) == CHECKPOINTED
    assert not (agent.app_store / "COMPLETED").exists(), "a new commit clears COMPLETED"


def test_checkpoint_files_are_put_back(agent: AgentHarness) -> None:
    annotations = {"memverge.ai/checkpoint-files": "/var/lib/app,/etc/app.conf"}
    argv = ["python3", "/apps/files_app.py", "/var/lib/app/state.txt"]
    first = agent.start(argv, annotations=annotations)
    wait_count(first, 5)
    first.exec(["sh", "-c", "echo tuned > /etc/app.conf"])
    assert stop_and_wait(first) == CHECKPOINTED

    second = agent.start(argv, annotations=annotations)
    assert wait_for(lambda: phases(second, "restore", "ok"), 20), second.stderr_text()
    second.signal(signal.SIGUSR1)
    assert wait_for(lambda: "state=written-at-start" in second.stdout_text(), 10), (
        second.stdout_text()[-300:]
    )
    assert second.exec(["cat", "/etc/app.conf"]).stdout == b"tuned\n"


def test_checkpoint_on_request_and_periodic_while_the_app_runs(agent: AgentHarness) -> None:
    box = agent.start(
        ["python3", "/apps/counter.py"],
        annotations={"memverge.ai/checkpoint-interval": "10s"},
    )
    wait_count(box, 5)
    manual = agent.checkpoint(box)
    after_manual = len(counts(box))
    time.sleep(0.5)
    assert len(counts(box)) > after_manual, "the application runs on after a checkpoint"
    assert wait_for(lambda: agent.latest() not in (None, manual), 20)
    periodic = phases(box, "dump", "ok")
    assert [p["reason"] for p in periodic] == ["request", "periodic"]
    at_periodic = len(counts(box))
    wait_count(box, at_periodic + 10)
    seen = counts(box)
    assert seen == list(range(1, len(seen) + 1)), "counting went on without a gap or a restart"

    box.kill()  # a node crash: no SIGTERM, no final dump
    box.wait(20)
    second = agent.start(["python3", "/apps/counter.py"])
    restored = wait_count(second, 3)
    assert at_periodic - 40 < restored[0] <= at_periodic + 1, (restored[0], at_periodic)
    assert re.search(r"count 1\n", second.stdout_text()) is None


def test_checkpoint_of_another_image_or_command_is_not_restored(agent: AgentHarness) -> None:
    # A rolling update: the new container runs another image; resuming the old program over
    # the new image's files would be wrong, so it starts fresh and the log says why. That is
    # no restore failure: nothing is marked FAILED, no warning.
    first = agent.start(["python3", "/apps/counter.py"], env={"PODCKPT_IMAGE": "reg/app:1"})
    wait_count(first, 5)
    assert stop_and_wait(first) == CHECKPOINTED
    assert agent.latest() is not None

    second = agent.start(["python3", "/apps/counter.py"], env={"PODCKPT_IMAGE": "reg/app:2"})
    wait_count(second, 3)
    assert counts(second)[0] == 1  # fresh, not resumed
    (skipped,) = phases(second, "restore", "skipped")
    assert skipped["cause"] == "NewRevision"
    assert "made by image 'reg/app:1', this pod runs 'reg/app:2'" in skipped["why"]
    assert not phases(second, "restore", "failed")
    assert not phases(second, "restore", "fallback-fresh")
    assert phases(second, "fresh-start", "ok")
    # Retired once the new program runs, not before (a failed start would have kept it).
    assert phases(second, "retire", "ok")[0]["generations"] == [skipped["generation"]]
    assert stop_and_wait(second) == CHECKPOINTED

    # Same image, other argv: also not the same program.
    third = agent.start(["python3", "/apps/counter.py", "0.05"], env={"PODCKPT_IMAGE": "reg/app:2"})
    wait_count(third, 3)
    assert counts(third)[0] == 1
    assert "made by argv" in phases(third, "restore", "skipped")[0]["why"]
    assert stop_and_wait(third) == CHECKPOINTED


def test_a_checkpoint_asked_for_during_a_restore_is_answered(agent: AgentHarness) -> None:
    """The control socket is open while the agent restores (controlserver.open_control_soon):
    `podckpt-agent checkpoint` made then waits in its backlog and is answered once supervision
    starts, where it was told that no agent runs in the container."""
    argv = ["python3", "/apps/memory.py", "512"]
    full = {"memverge.ai/restore-mode": "full"}
    first = agent.start(argv, annotations=full)
    assert wait_for(lambda: "count 2" in first.stdout_text(), 120), first.stderr_text()[-2000:]
    assert stop_and_wait(first, 120) == CHECKPOINTED
    restored_from = agent.latest()

    box = agent.start(argv, annotations=full)
    sock = Path(f"/proc/{box.pid}/root/.podckpt-run/control.sock")
    assert wait_for(sock.exists, 120, interval=0.005), box.stderr_text()[-2000:]
    restoring = not phases(box, "restore", "ok")
    requested = agent.checkpoint(box, timeout=120)
    assert [r["generation"] for r in phases(box, "restore", "ok")] == [restored_from]
    assert requested not in (None, restored_from)
    assert restoring, "the control socket appeared only once the restore was over"
    box.destroy()
