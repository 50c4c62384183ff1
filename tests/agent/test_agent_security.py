"""The agent keeps what the container asked for: the application's user (handed over or found
by the user probe), runAsNonRoot, no added capabilities for the application; and its control
socket answers only its own container, without ever stalling."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest
from agent_harness import AgentHarness, counts, phases, stop_and_wait, wait_count
from test_environment import RUNTIME_DEFAULT

from podckpt.agent import exitcodes
from podckpt.agent.capabilities import REQUIRED_CAPABILITIES
from podckpt.agent.exitcodes import CHECKPOINTED
from podckpt.devtools.sandbox import Bind, Sandbox, wait_for

pytestmark = pytest.mark.criu

CAPS = sorted({*RUNTIME_DEFAULT, *REQUIRED_CAPABILITIES})
LINE = r"^count (\d+) uid (\d+) gid (\d+)$"
AGENT = ["env", "PYTHONPATH=/opt/podckpt", "python3", "-m", "podckpt.agent"]


def _users(sandbox: Sandbox) -> set[tuple[int, int]]:
    return {(int(u), int(g)) for _, u, g in re.findall(LINE, sandbox.stdout_text(), re.M)}


def _app_status(sandbox: Sandbox, uid: int) -> str:
    pid = sandbox.exec(["pgrep", "-o", "-u", str(uid), "python3"]).stdout.split()[0].decode()
    return sandbox.exec(["cat", f"/proc/{pid}/status"]).stdout.decode()


def _pid_status(sandbox: Sandbox, pid: int) -> str:
    return sandbox.exec(["cat", f"/proc/{pid}/status"]).stdout.decode()


def test_user_probe_answer_decides_the_user_and_survives_restore(
    agent: AgentHarness, tmp_path: Path
) -> None:
    # What the user probe init container writes for an image with USER 1001 (and the runtime
    # gave it gid 1001, group 3000, HOME /home/app): the file is the probe's own.
    probes = tmp_path / "probes"
    probes.mkdir()
    answer = probes / "app"
    answer.write_text(
        json.dumps({"uid": 1001, "gid": 1001, "groups": [1001, 3000], "home": "/home/app"})
    )
    os.chown(answer, 1001, 1001)
    args = ["--user-probe", "/.podckpt-user/app", "--drop-capabilities", "CAP_CHECKPOINT_RESTORE"]
    binds = [Bind(probes, "/.podckpt-user", True)]
    caps = sorted({*CAPS, "CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE"})
    argv = ["python3", "/apps/user_counter.py"]
    first = agent.start(argv, capabilities=caps, agent_args=args, binds=binds, no_new_privs=True)
    assert wait_for(lambda: len(_users(first)) > 0, 20), first.stderr_text()[-2000:]
    assert _users(first) == {(1001, 1001)}
    status = _app_status(first, 1001)
    assert re.search(r"^Groups:\s+3000\s*$", status, re.M), status
    pid = first.exec(["pgrep", "-o", "-u", "1001", "python3"]).stdout.split()[0].decode()
    # Another user's /proc/PID/environ needs ptrace rights: read it as that user.
    code = f"import os;os.setgid(1001);os.setuid(1001);print(open('/proc/{pid}/environ').read())"
    environ = first.exec(["python3", "-c", code]).stdout.split(b"\0")
    assert b"HOME=/home/app" in environ, environ
    assert stop_and_wait(first) == CHECKPOINTED, first.stderr_text()[-2000:]

    second = agent.start(argv, capabilities=caps, agent_args=args, binds=binds, no_new_privs=True)
    assert wait_for(lambda: phases(second, "restore", "ok"), 20), second.stderr_text()[-2000:]
    status = _app_status(second, 1001)
    assert re.search(r"^Uid:\s+1001\s+1001\s+1001\s+1001$", status, re.M), status
    assert stop_and_wait(second) == CHECKPOINTED


@pytest.mark.parametrize("args", [["--user", "0"], []], ids=["uid-0", "no-user"])
def test_non_root_never_starts_the_application_as_root(
    agent: AgentHarness, args: list[str]
) -> None:
    box = agent.start(
        ["python3", "/apps/counter.py"], capabilities=CAPS, agent_args=[*args, "--non-root"]
    )
    assert box.wait(20) == exitcodes.AGENT_FAILURE
    assert counts(box) == []
    failed = phases(box, "start", "failed")
    assert "runAsNonRoot is true, but the application would run as root" in failed[0]["error"]


def test_a_checkpoint_of_another_user_is_not_restored(agent: AgentHarness) -> None:
    # Dumped while the application ran as root; the container now runs it as uid 1000
    # (runAsUser added to the pod template): never resume the root tree.
    first = agent.start(["python3", "/apps/user_counter.py"], capabilities=CAPS)
    assert wait_for(lambda: _users(first) == {(0, 0)}, 20), first.stderr_text()[-2000:]
    assert stop_and_wait(first) == CHECKPOINTED
    caps = sorted({*CAPS, "CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE"})
    second = agent.start(
        ["python3", "/apps/user_counter.py"],
        capabilities=caps,
        agent_args=["--user", "1000:1000", "--non-root"],
    )
    assert wait_for(lambda: _users(second) == {(1000, 1000)}, 20), second.stderr_text()[-2000:]
    skipped = phases(second, "restore", "skipped")
    assert skipped, second.stderr_text()[-2000:]
    assert "this pod runs its application as [1000, 1000]" in skipped[0]["why"]
    assert phases(second, "fresh-start", "ok")


def test_root_application_loses_only_the_added_capabilities(agent: AgentHarness) -> None:
    args = ["--drop-capabilities", "CAP_CHECKPOINT_RESTORE"]
    first = agent.start(
        ["python3", "/apps/counter.py"], capabilities=CAPS, agent_args=args, no_new_privs=True
    )
    wait_count(first, 3)
    status = _pid_status(first, phases(first, "fresh-start", "ok")[0]["pid"])
    effective = int(re.search(r"^CapEff:\s+(\w+)$", status, re.M)[1], 16)  # type: ignore[index]
    bounding = int(re.search(r"^CapBnd:\s+(\w+)$", status, re.M)[1], 16)  # type: ignore[index]
    assert effective >> 40 & 1 == 0
    assert bounding >> 40 & 1 == 0
    assert effective >> 8 & 1 == 1, "SETPCAP is the runtime's default: the application keeps it"
    assert stop_and_wait(first) == CHECKPOINTED, first.stderr_text()[-2000:]
    reached = counts(first)[-1]
    second = agent.start(
        ["python3", "/apps/counter.py"], capabilities=CAPS, agent_args=args, no_new_privs=True
    )
    assert wait_count(second, 3)[0] == reached + 1, second.stderr_text()[-2000:]
    status = _pid_status(second, phases(second, "restore", "ok")[0]["pid"])
    bounding = int(re.search(r"^CapBnd:\s+(\w+)$", status, re.M)[1], 16)  # type: ignore[index]
    assert bounding >> 40 & 1 == 0
    assert stop_and_wait(second) == CHECKPOINTED


# ---- the control socket -----------------------------------------------------------------


def _checkpoint_as(sandbox: Sandbox, uid: int) -> tuple[int, str]:
    code = (
        f"import os;os.setgroups([]);os.setgid({uid});os.setuid({uid});"
        "os.execvp('python3',['python3','-m','podckpt.agent','checkpoint'])"
    )
    done = sandbox.exec(["env", "PYTHONPATH=/opt/podckpt", "python3", "-c", code])
    return done.returncode, done.stderr.decode()


def test_a_non_root_process_of_the_container_cannot_ask_for_a_checkpoint(
    agent: AgentHarness,
) -> None:
    box = agent.start(["python3", "/apps/counter.py"], capabilities=CAPS)
    wait_count(box, 2)
    code, err = _checkpoint_as(box, 1000)
    assert code != 0
    assert "Permission denied" in err, err
    assert agent.latest() is None
    assert agent.checkpoint(box), "root in the container (kubectl exec) may"


def test_a_process_of_another_namespace_is_refused(agent: AgentHarness, tmp_path: Path) -> None:
    # The run directory is a host directory mounted into the container, as the kubelet mounts
    # an emptyDir. The test runs as root on the host, in other PID and mount namespaces, and
    # reaches the socket through it, as the node's root could.
    run = tmp_path / "run"
    run.mkdir()
    box = agent.start(
        ["python3", "/apps/counter.py"], capabilities=CAPS, binds=[Bind(run, "/.podckpt-run")]
    )
    wait_count(box, 2)
    path = run / "control.sock"
    assert wait_for(path.exists, 10), box.stderr_text()[-2000:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b'{"op":"checkpoint"}\n')
        answer = json.loads(sock.recv(4096))
    assert answer["ok"] is False
    assert "not in the agent's" in answer["error"]
    assert agent.latest() is None
    assert wait_for(lambda: phases(box, "control", "refused"), 10)


def test_a_client_that_never_finishes_its_request_stalls_nothing(agent: AgentHarness) -> None:
    box = agent.start(["python3", "/apps/counter.py"], capabilities=CAPS)
    wait_count(box, 2)
    started = box.exec(
        ["sh", "-c", "python3 /apps/trickle_client.py >/tmp/trickle.log 2>&1 </dev/null &"]
    )
    assert started.returncode == 0
    assert wait_for(lambda: b"connected" in box.exec(["cat", "/tmp/trickle.log"]).stdout, 10)
    # Another request is served while the first client still trickles...
    assert agent.checkpoint(box, timeout=60)
    assert wait_for(lambda: b"dropped" in box.exec(["cat", "/tmp/trickle.log"]).stdout, 30)
    assert wait_for(lambda: phases(box, "control", "dropped"), 10)
    # ...and so is SIGTERM, with a new trickler connected.
    box.exec(["sh", "-c", "python3 /apps/trickle_client.py >/dev/null 2>&1 </dev/null &"])
    assert stop_and_wait(box) == CHECKPOINTED, box.stderr_text()[-2000:]
