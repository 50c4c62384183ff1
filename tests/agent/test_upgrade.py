"""Issue 14.5 (the store's part): checkpoints written by the previous release are restored by
this one. The previous release is v0.1.0 (commit V010: store layout 1, manifest format 1, no
HMAC): its agent is taken from git history, runs in the sandbox with real CRIU and dumps a
counter; this agent restores it. With a store key (as the webhook sets it up), an unsigned
0.1.0 manifest is refused unless the operator accepts them for the upgrade: then the
container starts fresh with a Warning-worthy line, never exit 200."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

import pytest
from agent_harness import REPO, AgentHarness, counts, phases, stop_and_wait, wait_count

from podckpt.agent.exitcodes import CHECKPOINTED
from podckpt.api import contract
from podckpt.devtools.sandbox import Bind

pytestmark = pytest.mark.criu

#: What the v0.1.0 agent exited with after a checkpoint (128+SIGTERM; 202 since).
V010_CHECKPOINTED = 143

#: main's HEAD when the manifest format 2 work began: the released layout 1 / format 1.
V010 = "1c346e161b883e2ec9c1a9689877e21dcdc73fa7"
COUNTER = ["python3", "/apps/counter.py"]


@pytest.fixture(scope="module")
def v010_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """src/ of v0.1.0, from git history (`git archive`)."""
    done = subprocess.run(
        ["git", "-C", str(REPO), "archive", V010, "src/podckpt/agent", "src/podckpt/api"],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        message = f"v0.1.0 ({V010}) is not in this checkout's history: {done.stderr.decode()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("v010")
    with tarfile.open(fileobj=BytesIO(done.stdout)) as archive:
        archive.extractall(out, filter="data")
    (out / "src/podckpt/__init__.py").write_text('"""podckpt v0.1.0 (agent and api only)."""\n')
    return out / "src"


def _dump_with_v010(agent: AgentHarness, source: Path) -> tuple[str, int]:
    old = agent.start(
        COUNTER,
        binds=[Bind(source, "/opt/podckpt-v010", True)],
        env={"PYTHONPATH": "/opt/podckpt-v010"},
    )
    wait_count(old, 5)
    assert stop_and_wait(old) == V010_CHECKPOINTED
    reached = counts(old)[-1]
    old.destroy()
    latest = agent.latest()
    assert latest is not None
    manifest = json.loads((agent.app_store / "generations" / latest / "manifest.json").read_text())
    assert manifest["format"] == 1, "written by the v0.1.0 agent"
    assert "hmac" not in manifest
    assert stat.S_IMODE(agent.app_store.stat().st_mode) == 0o755, "0.1.0's permissions"
    return latest, reached


def _keyed(agent: AgentHarness, accept: bool) -> dict[str, str]:
    (agent.labels_dir / "store-key").write_bytes(b"k" * 32)
    env = {contract.Env.STORE_KEY: "/etc/podinfo/store-key"}
    if accept:
        env[contract.Env.STORE_ACCEPT_UNSIGNED] = "true"
    return env


@pytest.mark.parametrize("setup", ["no key", "key, accepting 0.1.0 checkpoints"])
def test_a_v010_checkpoint_is_restored(agent: AgentHarness, v010_source: Path, setup: str) -> None:
    generation, reached = _dump_with_v010(agent, v010_source)
    env = {} if setup == "no key" else _keyed(agent, accept=True)
    new = agent.start(COUNTER, env=env)
    resumed = wait_count(new, 3)
    assert [r["generation"] for r in phases(new, "restore", "ok")] == [generation]
    assert reached - 3 < resumed[0] <= reached + 1, (resumed[0], reached)
    assert "Traceback" not in new.stderr_text()
    assert stat.S_IMODE(agent.app_store.stat().st_mode) == 0o700, "tightened when opened"
    assert stop_and_wait(new) == CHECKPOINTED
    newer = agent.latest()
    manifest = json.loads((agent.app_store / "generations" / f"{newer}/manifest.json").read_text())
    assert manifest["format"] == 2
    assert ("hmac" in manifest) == (setup != "no key")


def test_a_v010_checkpoint_is_refused_by_an_agent_that_authenticates(
    agent: AgentHarness, v010_source: Path
) -> None:
    generation, _ = _dump_with_v010(agent, v010_source)
    new = agent.start(COUNTER, env=_keyed(agent, accept=False))
    assert wait_count(new, 3)[0] == 1, "started fresh"
    (failed,) = phases(new, "restore", "failed")
    assert failed["generation"] == generation
    assert "carries no HMAC" in failed["error"]
    assert phases(new, "restore", "fallback-fresh")
    assert new.alive()
    assert "Traceback" not in new.stderr_text()
    new.destroy()
