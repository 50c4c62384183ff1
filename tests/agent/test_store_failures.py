"""Nothing that goes wrong during a dump or in the store may cost the committed generation."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_harness import AgentHarness, counts, phases, stop_and_wait, wait_count

from podckpt.agent.exitcodes import CHECKPOINT_FAILED, CHECKPOINTED
from podckpt.agent.store import Store
from podckpt.devtools.sandbox import wait_for

pytestmark = pytest.mark.criu


def _pages(agent: AgentHarness, generation: str) -> Path:
    images = agent.app_store / "generations" / generation / "images"
    return max(images.glob("pages-*.img"), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["corrupted", "truncated"])
def test_damaged_newest_generation_falls_back_to_the_previous(
    agent: AgentHarness, damage: str
) -> None:
    first = agent.start(["python3", "/apps/counter.py"])
    wait_count(first, 5)
    before_request = len(counts(first))
    older = agent.checkpoint(first)
    at_older = len(counts(first))
    wait_count(first, at_older + 20)
    assert stop_and_wait(first) == CHECKPOINTED
    newest = agent.latest()
    assert newest is not None
    assert newest != older
    reached = counts(first)[-1]

    pages = _pages(agent, newest)
    with pages.open("r+b") as f:
        if damage == "corrupted":
            f.seek(pages.stat().st_size // 2)
            f.write(b"\xff" * 64)
        else:
            f.truncate(pages.stat().st_size // 2)

    second = agent.start(["python3", "/apps/counter.py"])
    seen = wait_count(second, 3)
    failed = phases(second, "restore", "failed")
    assert [f["generation"] for f in failed] == [newest]
    assert damage in failed[0]["error"]
    ok = phases(second, "restore", "ok")[0]
    assert ok["generation"] == older
    assert ok["fallback"] is True
    assert before_request < seen[0] <= at_older + 1, "restored from the older generation"
    assert seen[0] < reached


def test_sigkill_during_a_dump_keeps_the_previous_generation(agent: AgentHarness) -> None:
    first = agent.start(["python3", "/apps/memory.py", "512"])
    assert wait_for(lambda: "ready" in first.stdout_text(), 60)
    wait_count(first, 3)
    before_request = len(counts(first))
    older = agent.checkpoint(first, timeout=120)
    at_older = len(counts(first))
    generations = agent.app_store / "generations"

    def dump_in_progress() -> bool:
        return any(
            p.name != older and any((p / "images").glob("*.img")) for p in generations.iterdir()
        )

    first.signal(15)
    assert wait_for(dump_in_progress, 20, interval=0.005)
    first.kill()  # the kubelet's SIGKILL at the end of the grace period
    first.wait(30)
    assert agent.latest() == older
    half = [p.name for p in generations.iterdir() if p.name != older]
    assert half
    assert not (generations / half[0] / "manifest.json").exists()

    second = agent.start(["python3", "/apps/memory.py", "512"])
    seen = wait_count(second, 3, timeout=60)
    assert wait_for(lambda: phases(second, "restore", "ok"), 20)
    assert phases(second, "cleanup", "ok")[0]["removed"] == half
    assert phases(second, "restore", "ok")[0]["generation"] == older
    assert before_request < seen[0] <= at_older + 1
    assert "ready" not in second.stdout_text()


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("problem", ["full", "not writable"])
def test_store_full_or_not_writable(agent: AgentHarness, problem: str) -> None:
    with _tmpfs(agent.store_dir, "64m"):
        first = agent.start(["python3", "/apps/exit_on_signal.py"])
        wait_count(first, 5)
        older = agent.checkpoint(first)
        store = Store(agent.app_store, "app")
        before = store.verify(store.generation(older))
        if problem == "full":
            filler = agent.store_dir / "filler"
            subprocess.run(
                ["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=100"],
                check=False,
                capture_output=True,
            )
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(agent.store_dir)], check=True)

        # The dump fails: the application still gets its SIGTERM and exits by itself, and the
        # agent's exit code says that it stopped without a checkpoint (never 0: a Job must
        # not count it as completed).
        assert stop_and_wait(first) == CHECKPOINT_FAILED
        assert phases(first, "exit", "not-checkpointed")[0]["app_code"] == 0
        assert "exiting 0: SIGTERM" in first.stdout_text()
        failed = phases(first, "dump", "failed")
        assert failed
        assert problem in failed[0]["error"]
        assert failed[0]["then"] == "SIGTERM forwarded"
        assert agent.latest() == older
        assert store.verify(store.generation(older)) == before
        assert not (agent.app_store / "COMPLETED").exists()

        if problem == "full":
            (agent.store_dir / "filler").unlink()
        else:
            subprocess.run(["mount", "-o", "remount,rw", str(agent.store_dir)], check=True)
        second = agent.start(["python3", "/apps/exit_on_signal.py"])
        assert wait_for(lambda: phases(second, "restore", "ok"), 20), second.stderr_text()
        assert phases(second, "restore", "ok")[0]["generation"] == older
        second.destroy()
