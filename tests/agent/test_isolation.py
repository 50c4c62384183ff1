"""What the application is started inside of: its own IPC namespace (System V shared memory,
semaphores and message queues saved and restored) and a seccomp filter that refuses io_uring
(the runtime falls back to epoll and is checkpointed), each with the capability it costs."""

from __future__ import annotations

import re

import pytest
from agent_harness import AgentHarness, counts, phases, stop_and_wait, wait_count
from test_environment import RUNTIME_DEFAULT

from podckpt.agent import exitcodes
from podckpt.agent.capabilities import REQUIRED_CAPABILITIES
from podckpt.agent.exitcodes import CHECKPOINTED
from podckpt.api import contract
from podckpt.devtools.sandbox import Sandbox, wait_for

pytestmark = pytest.mark.criu

SYSV = r"^count (\d+) sem (\d+) oldest '(?:tick (\d+))?'$"
#: What the webhook gives a container that asked for an own IPC namespace or for io_uring to
#: be denied: the runtime's defaults, the agent's required set, and CAP_SYS_ADMIN.
WITH_SYS_ADMIN = sorted({*RUNTIME_DEFAULT, *REQUIRED_CAPABILITIES, "CAP_SYS_ADMIN"})
PRIVATE_IPC = {"memverge.ai/checkpoint-ipc-namespace": "private"}
DENY_URING = {"memverge.ai/checkpoint-io-uring": "deny"}


def _sysv(sandbox: Sandbox) -> list[tuple[int, int, int]]:
    rows = re.findall(SYSV, sandbox.stdout_text(), re.MULTILINE)
    return [(int(c), int(s), int(o or 0)) for c, s, o in rows]


def test_system_v_ipc_in_an_own_namespace_survives_two_deaths(agent: AgentHarness) -> None:
    argv = ["python3", "/apps/sysv_ipc.py"]
    box = agent.start(argv, annotations=PRIVATE_IPC, capabilities=WITH_SYS_ADMIN)
    assert wait_for(lambda: len(_sysv(box)) >= 15, 20), box.stdout_text() + box.stderr_text()
    for _ in range(2):
        assert stop_and_wait(box) == CHECKPOINTED, box.stderr_text()
        last = _sysv(box)[-1]
        box = agent.start(argv, annotations=PRIVATE_IPC, capabilities=WITH_SYS_ADMIN)
        assert wait_for(lambda: len(_sysv(box)) >= 5, 20), box.stderr_text()  # noqa: B023
        count, sem, oldest = _sysv(box)[0]
        assert count == last[0] + 1, "the shared-memory counter went on"
        assert sem == count, "the semaphore kept its value"
        assert oldest == count - 8, "the message queue kept its messages, in order"
    assert "ipc shm" not in box.stdout_text(), "never started again"


def test_system_v_ipc_of_the_pods_namespace_is_refused_naming_the_key(
    agent: AgentHarness,
) -> None:
    box = agent.start(["python3", "/apps/sysv_ipc.py"])
    wait_count(box, 5)
    assert stop_and_wait(box) == contract.ExitCode.CHECKPOINT_FAILED, "it got its SIGTERM"
    error = phases(box, "dump", "failed")[0]["error"]
    assert "System V IPC" in error
    assert "memverge.ai/checkpoint-ipc-namespace: private" in error


def test_io_uring_is_refused_naming_the_key(agent: AgentHarness) -> None:
    box = agent.start(["python3", "/apps/io_uring_app.py"])
    assert wait_for(lambda: "backend io_uring" in box.stdout_text(), 20), box.stdout_text()
    assert stop_and_wait(box) == contract.ExitCode.CHECKPOINT_FAILED
    error = phases(box, "dump", "failed")[0]["error"]
    assert "io_uring" in error
    assert "memverge.ai/checkpoint-io-uring: deny" in error


def test_io_uring_denied_the_runtime_falls_back_and_is_checkpointed(
    agent: AgentHarness,
) -> None:
    argv = ["python3", "/apps/io_uring_app.py"]
    first = agent.start(argv, annotations=DENY_URING, capabilities=WITH_SYS_ADMIN)
    assert wait_for(
        lambda: "backend epoll (io_uring_setup: errno 38)" in first.stdout_text(), 20
    ), first.stdout_text() + first.stderr_text()
    wait_count(first, 10)
    assert stop_and_wait(first) == CHECKPOINTED, first.stderr_text()
    reached = counts(first)[-1]
    second = agent.start(argv, annotations=DENY_URING, capabilities=WITH_SYS_ADMIN)
    assert wait_count(second, 5)[0] == reached + 1, second.stderr_text()
    # The restored application is still under the filter; the agent is not.
    done = second.exec(
        ["sh", "-c", "grep -h Seccomp: /proc/1/status /proc/$(cat /proc/1/task/1/children"
         " | cut -d' ' -f1)/status"]
    )  # fmt: skip
    assert done.stdout.decode().split() == ["Seccomp:", "0", "Seccomp:", "2"], done


def test_isolation_without_cap_sys_admin_is_refused_at_start(agent: AgentHarness) -> None:
    caps = sorted({*RUNTIME_DEFAULT, *REQUIRED_CAPABILITIES})
    box = agent.start(["python3", "/apps/counter.py"], annotations=DENY_URING, capabilities=caps)
    assert box.wait(20) == exitcodes.AGENT_FAILURE
    error = phases(box, "start", "failed")[0]["error"]
    assert "checkpoint-io-uring: deny needs CAP_SYS_ADMIN" in error
