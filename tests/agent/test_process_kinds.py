"""Kinds of process a real application is made of, each through a real dump and restore."""

from __future__ import annotations

import json
import re
import signal
import threading

import pytest
from agent_harness import AgentHarness, phases, stop_and_wait

from podckpt.agent.exitcodes import CHECKPOINTED
from podckpt.devtools.sandbox import Sandbox, wait_for

pytestmark = pytest.mark.criu


def _matches(sandbox: Sandbox, pattern: str) -> list[tuple[str, ...]]:
    return re.findall(pattern, sandbox.stdout_text(), re.MULTILINE)


def test_process_tree_with_a_pipe(agent: AgentHarness) -> None:
    first = agent.start(["python3", "/apps/pipe_tree.py"])
    assert wait_for(lambda: len(_matches(first, r"^pipe (\d+) child (\d+)$")) >= 20, 20)
    assert stop_and_wait(first) == CHECKPOINTED
    before = _matches(first, r"^pipe (\d+) child (\d+)$")
    last, child = int(before[-1][0]), before[-1][1]

    second = agent.start(["python3", "/apps/pipe_tree.py"])
    assert wait_for(lambda: len(_matches(second, r"^pipe (\d+) child (\d+)$")) >= 10, 20)
    after = _matches(second, r"^pipe (\d+) child (\d+)$")
    # Bytes that were in the pipe at dump time arrive too: nothing lost, nothing repeated.
    assert [int(n) for n, _ in after[:10]] == list(range(last + 1, last + 11))
    assert {c for _, c in after} == {child}, "the child must be the same process"
    assert int(child) >= 300, "the application's PIDs stay above the agent's range"


def test_multi_threaded_program(agent: AgentHarness) -> None:
    pattern = r"^threads (\d+) (\d+) (\d+) (\d+)$"
    first = agent.start(["python3", "/apps/threads.py"])
    assert wait_for(lambda: len(_matches(first, pattern)) >= 10, 20)
    assert stop_and_wait(first) == CHECKPOINTED
    last = [int(v) for v in _matches(first, pattern)[-1]]

    second = agent.start(["python3", "/apps/threads.py"])
    assert wait_for(lambda: len(_matches(second, pattern)) >= 10, 20)
    rows = [[int(v) for v in row] for row in _matches(second, pattern)]
    assert all(a >= b for a, b in zip(rows[0], last, strict=True)), (rows[0], last)
    assert all(a < 2 * b + 50 for a, b in zip(rows[0], last, strict=True)), "restarted?"
    assert all(a > b for a, b in zip(rows[-1], rows[0], strict=True)), "every thread runs on"


def test_tcp_server_with_a_connected_client(agent: AgentHarness) -> None:
    first = agent.start(["python3", "/apps/tcp_server.py"])
    assert wait_for(lambda: "listening" in first.stdout_text(), 20)
    done = first.exec(["python3", "/apps/tcp_client.py", "3"])
    assert done.stdout.decode().split("\n")[:3] == ["served 1", "served 2", "served 3"]
    holder = threading.Thread(
        target=lambda: first.exec(["python3", "/apps/tcp_client.py", "1", "hold"], timeout=60),
        daemon=True,
    )
    holder.start()
    assert wait_for(lambda: "served 4" in first.stdout_text(), 20)
    assert stop_and_wait(first) == CHECKPOINTED  # dumped with the client still connected
    holder.join(30)

    second = agent.start(["python3", "/apps/tcp_server.py"])
    assert wait_for(lambda: phases(second, "restore", "ok"), 20), second.stderr_text()
    # The established connection comes back closed (the pod IP changed); the listener
    # accepts new clients and the server's memory goes on.
    assert wait_for(lambda: "connection closed" in second.stdout_text(), 20)
    done = second.exec(["python3", "/apps/tcp_client.py", "2"])
    assert done.stdout.decode().split("\n")[:2] == ["served 5", "served 6"], done
    assert "listening" not in second.stdout_text()


def test_log_file_tmp_and_dev_shm_in_the_container_filesystem(agent: AgentHarness) -> None:
    first = agent.start(["python3", "/apps/files_app.py"])
    assert wait_for(lambda: len(_matches(first, r"^count (\d+)$")) >= 20, 20)
    assert stop_and_wait(first) == CHECKPOINTED
    reached = int(_matches(first, r"^count (\d+)$")[-1])
    assert phases(first, "commit", "ok")[0]["files"] == 3
    assert _manifest_files(agent) == {"/var/log/app/app.log", "/tmp/work.dat", "/dev/shm/state"}

    second = agent.start(["python3", "/apps/files_app.py"])
    assert wait_for(lambda: len(_matches(second, r"^count (\d+)$")) >= 5, 20), second.stderr_text()
    assert int(_matches(second, r"^count (\d+)$")[0]) == reached + 1
    second.signal(signal.SIGUSR1)
    assert wait_for(lambda: _matches(second, r"^report shm=(\d+) log_lines=(\d+) last=line (\d+)"))
    shm, lines, last = map(
        int, _matches(second, r"^report shm=(\d+) log_lines=(\d+) last=line (\d+)")[0]
    )
    assert shm > reached, "the shared mapping in /dev/shm kept its content"
    assert lines == last, "the log kept every line written before the checkpoint"
    assert last >= shm


def _manifest_files(agent: AgentHarness) -> set[str]:
    latest = agent.latest()
    if latest is None:
        return set()
    manifest = json.loads((agent.app_store / "generations" / latest / "manifest.json").read_text())
    return set(manifest["saved_files"])


def test_restored_output_reaches_the_new_sandbox_stdout_and_stderr(agent: AgentHarness) -> None:
    script = (
        "import sys, time\n"
        "n = 0\n"
        "while True:\n"
        "    n += 1\n"
        "    print(f'out {n}', flush=True)\n"
        "    print(f'err {n}', file=sys.stderr, flush=True)\n"
        "    time.sleep(0.05)\n"
    )
    first = agent.start(["python3", "-c", script])
    assert wait_for(lambda: "out 10" in first.stdout_text(), 20)
    assert stop_and_wait(first) == CHECKPOINTED
    second = agent.start(["python3", "-c", script])
    assert wait_for(lambda: len(re.findall(r"^out \d+$", second.stdout_text(), re.M)) >= 5, 20)
    assert wait_for(lambda: len(re.findall(r"^err \d+$", second.stderr_text(), re.M)) >= 5, 20)
    first_out = int(re.findall(r"^out (\d+)$", second.stdout_text(), re.M)[0])
    assert first_out > 10
    assert "out 1\n" not in second.stdout_text()
