"""What the container must provide: capabilities, no seccomp filter; clear errors otherwise."""

from __future__ import annotations

import pytest
from agent_harness import AgentHarness, counts, phases, stop_and_wait, wait_count

from podckpt.agent import exitcodes
from podckpt.agent.capabilities import REQUIRED_CAPABILITIES
from podckpt.agent.exitcodes import CHECKPOINTED

pytestmark = pytest.mark.criu

#: What containerd gives a container by default (the Kubernetes default).
RUNTIME_DEFAULT = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip


def test_runtime_default_capabilities_plus_required_are_enough(agent: AgentHarness) -> None:
    caps = sorted({*RUNTIME_DEFAULT, *REQUIRED_CAPABILITIES})
    first = agent.start(["python3", "/apps/tcp_server.py"], capabilities=caps)
    first.exec(["python3", "/apps/tcp_client.py", "2"])
    assert stop_and_wait(first) == CHECKPOINTED, first.stderr_text()
    second = agent.start(["python3", "/apps/tcp_server.py"], capabilities=caps)
    done = second.exec(["python3", "/apps/tcp_client.py", "1"])
    assert done.stdout.decode().strip() == "served 3", second.stderr_text()


@pytest.mark.parametrize("missing", REQUIRED_CAPABILITIES)
def test_missing_capability_is_named_at_start(agent: AgentHarness, missing: str) -> None:
    caps = sorted({*RUNTIME_DEFAULT, *REQUIRED_CAPABILITIES} - {missing})
    box = agent.start(["python3", "/apps/counter.py"], capabilities=caps)
    assert box.wait(20) == exitcodes.AGENT_FAILURE
    assert counts(box) == []
    failed = phases(box, "start", "failed")
    assert missing in failed[0]["error"]


def test_seccomp_filter_on_the_agent_is_a_clear_error_at_start(agent: AgentHarness) -> None:
    box = agent.start(["python3", "/apps/counter.py"], seccomp=True)
    assert box.wait(20) == exitcodes.AGENT_FAILURE
    assert "seccomp" in phases(box, "start", "failed")[0]["error"]
    assert counts(box) == []


def test_dormant_agent_without_checkpointing_tolerates_seccomp(agent: AgentHarness) -> None:
    box = agent.start(
        ["python3", "/apps/counter.py"],
        labels={"memverge.ai/checkpoint-mode": "false"},
        seccomp=True,
    )
    wait_count(box, 3)
    assert phases(box, "start", "dormant")
    assert stop_and_wait(box) == 128 + 15
