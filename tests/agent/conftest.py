"""The `agent` fixture: see agent_harness.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from agent_harness import AgentHarness

from podckpt.devtools.sandbox import Sandbox


@pytest.fixture
def agent(
    criu_rootfs: Path, sandbox_factory: Callable[..., Sandbox], tmp_path: Path
) -> AgentHarness:
    store = tmp_path / "store"
    store.mkdir()
    labels = tmp_path / "podinfo"
    labels.mkdir()
    return AgentHarness(criu_rootfs, sandbox_factory, store, labels)
