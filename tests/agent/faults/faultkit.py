"""What the fault-injection scenarios share: the seed, the store key, the faulty agent's entry
point, and the checks every case ends with (see conftest.py and docs/reliability.md)."""

from __future__ import annotations

import collections
import json
import os
import shutil
from pathlib import Path
from typing import Any

from agent_harness import AgentHarness, log_lines

from podckpt.agent.generations import FAILED, RESTORED
from podckpt.agent.manifest import Trust
from podckpt.agent.store import Store
from podckpt.api import contract
from podckpt.devtools import faultsummary
from podckpt.devtools.sandbox import Sandbox

SEED = int(os.environ.get("FAULT_SEED", "16"))
KEY = b"fault-suite-namespace-key-0123456789"
FAULT_ENTRY = ("python3", "/apps/fault_agent.py")


class Tally:
    """Cases run per scenario; what was lost is asserted per case (a loss fails the test)."""

    def __init__(self) -> None:
        self.cases: collections.Counter[str] = collections.Counter()
        self.clock = faultsummary.SuiteClock()

    def add(self, scenario: str, count: int = 1) -> None:
        self.cases[scenario] += count


TALLY = Tally()


def keyed_env(agent: AgentHarness, fault: str | None = None) -> dict[str, str]:
    """The store key as the webhook hands it over (a file only the agent reads)."""
    (agent.labels_dir / "store-key").write_bytes(KEY)
    env = {contract.Env.STORE_KEY: "/etc/podinfo/store-key"}
    if fault:
        env["AGENT_FAULT"] = fault
    return env


def store_of(agent: AgentHarness) -> Store:
    return Store(agent.app_store, "app", Trust(KEY))


def no_traceback(box: Sandbox) -> None:
    text = box.stderr_text()
    assert "Traceback" not in text, text[-3000:]


def fault_calls(box: Sandbox, phase: str, run: int) -> int:
    for record in _fault_lines(box):
        if record.get("fault") == "calls" and (record["phase"], record["run"]) == (phase, run):
            return int(record["calls"])
    raise AssertionError(f"no call count for {phase} run {run}: {box.stderr_text()[-2000:]}")


def _fault_lines(box: Sandbox) -> list[dict[str, Any]]:
    out = []
    for line in box.stderr_text().splitlines():
        if line.startswith('{"fault"'):
            out.append(json.loads(line))
    return out


def committed_intact(agent: AgentHarness) -> list[str]:
    """Every committed generation that is not history (not retired) verifies: checksums,
    HMAC, nothing missing or extra. None of them is marked FAILED: nothing the faults did may
    make a committed generation unrestorable. Returns their names, newest first."""
    store = store_of(agent)
    names = []
    for gen in store.unrestored():
        assert not (gen.path / FAILED).exists(), f"committed generation {gen.name} marked FAILED"
        store.verify(gen)
        names.append(gen.name)
    return names


def retired(agent: AgentHarness, name: str) -> bool:
    path = agent.app_store / "generations" / name
    return not path.exists() or (path / RESTORED).exists()


def agent_records(box: Sandbox, phase: str) -> list[dict[str, Any]]:
    return [r for r in log_lines(box) if r["phase"] == phase]


def copy_store(source: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, symlinks=True)


def wait_and_kill(box: Sandbox, timeout: float = 60) -> int:
    """Wait until the agent exits or stops at its kill point; SIGKILL it there (from outside
    its PID namespace, as the kubelet does). The exit status: 137 when killed."""
    from podckpt.devtools.sandbox import wait_for  # noqa: PLC0415

    def stopped() -> bool:
        return not box.alive() or '{"fault": "kill-me"}' in box.stderr_text()

    assert wait_for(stopped, timeout, interval=0.005), box.stderr_text()[-2000:]
    if box.alive():
        box.kill()
    return box.wait(30)
