"""Applications that run as a non-root user: CRIU's dump runs as that user (asuser.py)."""

from __future__ import annotations

import re

import pytest
from agent_harness import AgentHarness, phases, stop_and_wait
from test_environment import RUNTIME_DEFAULT

from podckpt.agent.capabilities import REQUIRED_CAPABILITIES
from podckpt.agent.exitcodes import CHECKPOINT_FAILED, CHECKPOINTED
from podckpt.devtools.sandbox import Sandbox, wait_for

pytestmark = pytest.mark.criu

CAPS = sorted({*RUNTIME_DEFAULT, *REQUIRED_CAPABILITIES})
LINE = r"^count (\d+) uid (\d+) gid (\d+)$"


def _lines(sandbox: Sandbox) -> list[tuple[int, int, int]]:
    found = re.findall(LINE, sandbox.stdout_text(), re.MULTILINE)
    return [(int(n), int(u), int(g)) for n, u, g in found]


def _wait_lines(sandbox: Sandbox, minimum: int) -> list[tuple[int, int, int]]:
    assert wait_for(lambda: len(_lines(sandbox)) >= minimum, 20), sandbox.stderr_text()[-2000:]
    return _lines(sandbox)


def test_application_running_as_another_user_is_checkpointed_and_restored(
    agent: AgentHarness,
) -> None:
    # Started as root by the agent, the application becomes 1000:1000 (as gosu/su-exec do).
    argv = ["python3", "/apps/user_counter.py", "--as", "1000:1000"]
    first = agent.start(argv, capabilities=CAPS)
    seen = _wait_lines(first, 5)
    assert {(u, g) for _, u, g in seen} == {(1000, 1000)}
    assert stop_and_wait(first) == CHECKPOINTED, first.stderr_text()[-2000:]
    dump = phases(first, "dump", "ok")
    assert dump, first.stderr_text()[-2000:]
    assert dump[0]["criu_user"] == "1000:1000"
    reached = _lines(first)[-1][0]

    second = agent.start(argv, capabilities=CAPS)
    seen = _wait_lines(second, 5)
    assert phases(second, "restore", "ok"), second.stderr_text()[-2000:]
    assert seen[0][0] == reached + 1
    assert {(u, g) for _, u, g in seen} == {(1000, 1000)}
    assert stop_and_wait(second) == CHECKPOINTED


def test_tree_of_several_users_is_refused_in_one_line(agent: AgentHarness) -> None:
    box = agent.start(["python3", "/apps/mixed_users.py"], capabilities=CAPS)
    assert wait_for(lambda: "ready" in box.stdout_text(), 20), box.stderr_text()
    # The dump is refused; the application gets its SIGTERM and exits by itself (code 0);
    # the agent says that it stopped without a checkpoint.
    assert stop_and_wait(box) == CHECKPOINT_FAILED
    assert phases(box, "exit", "not-checkpointed")[0]["app_code"] == 0
    failed = phases(box, "dump", "failed")
    assert failed, box.stderr_text()[-2000:]
    assert "different users (uids 0, 1000)" in failed[0]["error"]
    assert agent.latest() is None


#: What the webhook hands over for a container with runAsUser 1000, runAsGroup 1000 and
#: `drop: [ALL]`, whose pod has `allowPrivilegeEscalation: false` set by the webhook.
WEBHOOK_ARGS = [
    "--user",
    "1000:1000",
    "--drop-capabilities",
    "CAP_CHECKPOINT_RESTORE,CAP_SETPCAP,CAP_SETUID,CAP_SETGID,CAP_DAC_OVERRIDE",
]
USER_CAPS = sorted({*CAPS, "CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE"})


def _status(sandbox: Sandbox, uid: int) -> str:
    pid = sandbox.exec(["pgrep", "-o", "-u", str(uid), "python3"]).stdout.split()[0].decode()
    return sandbox.exec(["cat", f"/proc/{pid}/status"]).stdout.decode()


def _field(status: str, name: str) -> str:
    match = re.search(rf"^{name}:\s+(.*)$", status, re.MULTILINE)
    assert match, status
    return match[1].strip()


def test_container_user_handed_over_by_the_webhook_runs_the_application(
    agent: AgentHarness,
) -> None:
    # The webhook runs the agent as root with no_new_privs and passes the container's
    # runAsUser/runAsGroup: the application runs as that user, without any capability, and
    # without those the webhook added even in its bounding set; dump and restore still work.
    argv = ["python3", "/apps/user_counter.py"]
    first = agent.start(argv, capabilities=USER_CAPS, agent_args=WEBHOOK_ARGS, no_new_privs=True)
    seen = _wait_lines(first, 5)
    assert {(u, g) for _, u, g in seen} == {(1000, 1000)}
    status = _status(first, 1000)
    assert int(_field(status, "CapEff"), 16) == 0, status
    assert int(_field(status, "CapBnd"), 16) >> 40 & 1 == 0, "CHECKPOINT_RESTORE bounded away"
    assert _field(status, "NoNewPrivs") == "1"
    assert stop_and_wait(first) == CHECKPOINTED, first.stderr_text()[-2000:]
    assert phases(first, "dump", "ok")[0]["criu_user"] == "1000:1000"
    reached = _lines(first)[-1][0]

    second = agent.start(argv, capabilities=USER_CAPS, agent_args=WEBHOOK_ARGS, no_new_privs=True)
    seen = _wait_lines(second, 5)
    assert phases(second, "restore", "ok"), second.stderr_text()[-2000:]
    assert seen[0][0] == reached + 1
    assert {(u, g) for _, u, g in seen} == {(1000, 1000)}
    restored = _status(second, 1000)
    assert _field(restored, "Uid").split() == ["1000"] * 4
    assert int(_field(restored, "CapBnd"), 16) >> 40 & 1 == 0
    assert stop_and_wait(second) == CHECKPOINTED
