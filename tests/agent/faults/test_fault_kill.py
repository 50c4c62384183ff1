"""SIGKILL at seeded random points of dump, commit and restore (issue 16.2).

A kill point is the n-th system call the agent makes inside the phase (drawn from the count a
calibration run measured), or, for half of the dump and restore cases, a moment inside CRIU's
own run (drawn from the measured duration). After each kill: no traceback, every committed
generation that is not history still verifies, and the next start restores the newest one
(never a fresh start while one is left, never exit 200).
"""

from __future__ import annotations

import random
import signal

import pytest
from agent_harness import AgentHarness, counts, phases, wait_count
from faultkit import (
    FAULT_ENTRY,
    Tally,
    committed_intact,
    copy_store,
    fault_calls,
    keyed_env,
    no_traceback,
    wait_and_kill,
)

from podckpt.agent.exitcodes import CHECKPOINTED

pytestmark = pytest.mark.criu

APP = ["python3", "/apps/counter.py", "0.02"]
CASES = 20
KILLED = 128 + signal.SIGKILL
COUNTING = "kill:commit:0"  # counts calls, never fires


def _calibrate_dump(agent: AgentHarness) -> tuple[int, int, float]:
    """Calls of the SIGTERM dump (without its commit) and of its commit; the dump's seconds."""
    box = agent.start(APP, env=keyed_env(agent, COUNTING), entry=FAULT_ENTRY)
    try:
        wait_count(box, 3)
        agent.checkpoint(box)
        box.signal(signal.SIGTERM)
        assert box.wait(60) == CHECKPOINTED
        dump_s = next(p["duration_s"] for p in phases(box, "sigterm", "checkpointed"))
        return fault_calls(box, "dump", 2), fault_calls(box, "commit", 2), float(dump_s)
    finally:
        box.destroy()


@pytest.mark.parametrize("phase", ["dump", "commit"])
def test_sigkill_during_the_final_dump_or_its_commit(
    agent: AgentHarness, phase: str, seed: int, tally: Tally
) -> None:
    """Each case: the agent restores what the previous case left (or starts fresh), commits
    a checkpoint on request, then gets SIGTERM and is killed at the drawn point of that
    dump. Cases chain: the next case's start is this case's proof of recovery."""
    dump_calls, commit_calls, dump_s = _calibrate_dump(agent)
    rng = random.Random(f"{seed}-{phase}")
    previous = agent.latest()
    outcomes = {"killed, old kept": 0, "killed, new committed": 0, "not killed": 0}
    for case in range(CASES):
        if phase == "dump" and case % 2:
            fault = f"killafter:dump:{rng.uniform(0, dump_s):.4f}@2"
        else:
            calls = dump_calls if phase == "dump" else commit_calls
            fault = f"kill:{phase}:{rng.randint(1, calls)}@2"
        box = agent.start(APP, env=keyed_env(agent, fault), entry=FAULT_ENTRY)
        try:
            seen = wait_count(box, 3)
            restored = phases(box, "restore", "ok")
            assert [r["generation"] for r in restored] == [previous], (case, fault)
            assert seen[0] > 1, f"case {case} ({fault}): started fresh with {previous} left"
            requested = agent.checkpoint(box)
            box.signal(signal.SIGTERM)
            code = wait_and_kill(box)
            no_traceback(box)
            assert code in (KILLED, CHECKPOINTED), (case, fault, code)
            intact = committed_intact(agent)
            latest = agent.latest()
            assert latest is not None
            assert intact[0] == latest, (case, fault)
            if code == CHECKPOINTED:
                assert latest != requested
                outcomes["not killed"] += 1
            else:
                assert requested in intact, f"case {case} ({fault}): lost {requested}"
                kept = latest == requested
                outcomes["killed, old kept" if kept else "killed, new committed"] += 1
            previous = latest
            tally.add(f"sigkill-{phase}")
        finally:
            box.destroy()
    print(f"sigkill-{phase}: {outcomes}")
    assert outcomes["killed, old kept"] + outcomes["killed, new committed"] >= CASES * 3 // 4
    final = agent.start(APP, env=keyed_env(agent))
    try:
        wait_count(final, 3)
        assert [r["generation"] for r in phases(final, "restore", "ok")] == [previous]
    finally:
        final.destroy()


def test_sigkill_during_restore(agent: AgentHarness, seed: int, tally: Tally) -> None:
    """Each case restores a copy of the same store and is killed at the drawn point of the
    restore (verification, files put back, CRIU, PID floor, retiring). The next start then
    restores the same generation, unless the kill came after the restore had retired it
    (history: the application had already resumed from it), and then starts fresh."""
    first = agent.start(APP, env=keyed_env(agent))
    wait_count(first, 5)
    agent.checkpoint(first)
    wait_count(first, len(counts(first)) + 5)
    first.signal(signal.SIGTERM)
    assert first.wait(60) == CHECKPOINTED
    first.destroy()
    newest = agent.latest()
    snapshot = agent.store_dir.parent / "snapshot"
    copy_store(agent.app_store, snapshot)

    box = agent.start(APP, env=keyed_env(agent, COUNTING), entry=FAULT_ENTRY)
    try:
        wait_count(box, 3)
        calls = fault_calls(box, "restore", 1)
        restore_s = float(phases(box, "restore", "ok")[0]["duration_s"])
    finally:
        box.destroy()

    rng = random.Random(f"{seed}-restore")
    outcomes = {"restored": 0, "fresh": 0}
    for case in range(CASES):
        copy_store(snapshot, agent.app_store)
        if case % 2:
            fault = f"killafter:restore:{rng.uniform(0, restore_s):.4f}"
        else:
            fault = f"kill:restore:{rng.randint(1, calls)}"
        box = agent.start(APP, env=keyed_env(agent, fault), entry=FAULT_ENTRY)
        try:
            assert wait_and_kill(box) == KILLED, (case, fault)
            no_traceback(box)
        finally:
            box.destroy()
        intact = committed_intact(agent)
        again = agent.start(APP, env=keyed_env(agent))
        try:
            seen = wait_count(again, 3)
            no_traceback(again)
            restored = [r["generation"] for r in phases(again, "restore", "ok")]
            if intact:
                assert restored == [intact[0]], (case, fault, intact)
                assert intact[0] == newest
                assert seen[0] > 1
                outcomes["restored"] += 1
            else:
                assert restored == []
                assert seen[0] == 1
                outcomes["fresh"] += 1
            tally.add("sigkill-restore")
        finally:
            again.destroy()
    print(f"sigkill-restore: {outcomes}")
    assert outcomes["restored"] > 0, outcomes
