"""The store's file system full at each phase (issue 16.2), for real: a 64 MiB tmpfs that the
faulty agent fills completely (ENOSPC from then on) as the phase begins.

A checkpoint that cannot be written fails in one line that says the store is full, the
application still gets its SIGTERM (it exits by itself), the committed generation before it is
untouched, and the next start restores it even while the store is still full. A store that
cannot even be created starts the application without checkpoints (never a crash loop).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_harness import AgentHarness, phases, stop_and_wait, wait_count
from faultkit import FAULT_ENTRY, Tally, committed_intact, keyed_env, no_traceback

from podckpt.agent.exitcodes import CHECKPOINT_FAILED
from podckpt.devtools.sandbox import wait_for

pytestmark = pytest.mark.criu

EXIT_APP = ["python3", "/apps/exit_on_signal.py"]


@contextlib.contextmanager
def _tmpfs(path: Path, size: str = "64m") -> Iterator[Path]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(volume: Path) -> None:
    fd = os.open(volume / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


@pytest.mark.parametrize("phase", ["dump", "save", "commit", "latest"])
def test_store_full_during_the_final_checkpoint(
    agent: AgentHarness, phase: str, tally: Tally
) -> None:
    """dump: before CRIU writes its images; save: before the open files are copied; commit:
    before the manifest; latest: the manifest written, before LATEST moves to it."""
    with _tmpfs(agent.store_dir):
        box = agent.start(EXIT_APP, env=keyed_env(agent, f"fill:{phase}@2"), entry=FAULT_ENTRY)
        try:
            wait_count(box, 5)
            kept = agent.checkpoint(box)
            # the application got its SIGTERM and exited 0; the agent says: no checkpoint
            assert stop_and_wait(box) == CHECKPOINT_FAILED
            assert phases(box, "exit", "not-checkpointed")[0]["app_code"] == 0
            assert "exiting 0: SIGTERM" in box.stdout_text()
            no_traceback(box)
            (failed,) = phases(box, "dump", "failed")
            assert "is full" in failed["error"], failed
            assert failed["then"] == "SIGTERM forwarded"
        finally:
            box.destroy()
        assert agent.latest() == kept
        assert committed_intact(agent) == [kept]

        # Still full: the restore needs no space, and nothing is lost.
        again = agent.start(EXIT_APP, env=keyed_env(agent))
        try:
            assert wait_for(lambda: phases(again, "restore", "ok"), 30), again.stderr_text()
            assert phases(again, "restore", "ok")[0]["generation"] == kept
            no_traceback(again)
        finally:
            again.destroy()
    tally.add("store-full")


def test_store_full_during_restore(agent: AgentHarness, tally: Tally) -> None:
    with _tmpfs(agent.store_dir):
        box = agent.start(EXIT_APP, env=keyed_env(agent))
        wait_count(box, 5)
        kept = agent.checkpoint(box)
        box.destroy()
        again = agent.start(EXIT_APP, env=keyed_env(agent, "fill:restore"), entry=FAULT_ENTRY)
        try:
            assert wait_for(lambda: phases(again, "restore", "ok"), 30), again.stderr_text()
            assert phases(again, "restore", "ok")[0]["generation"] == kept
            assert wait_count(again, 3)[0] > 1
            no_traceback(again)
        finally:
            again.destroy()
    tally.add("store-full")


def test_store_full_before_the_store_exists(agent: AgentHarness, tally: Tally) -> None:
    with _tmpfs(agent.store_dir):
        _fill(agent.store_dir)
        box = agent.start(EXIT_APP, env=keyed_env(agent))
        try:
            wait_count(box, 3)
            (unusable,) = phases(box, "store", "unusable")
            assert "is full" in unusable["error"]
            assert stop_and_wait(box) == 0  # no checkpoints: SIGTERM goes to the application
            no_traceback(box)
        finally:
            box.destroy()
    tally.add("store-full")
