"""Widely used servers, as Debian ships them, keep their state across two container deaths
under the agent: a Node.js HTTP server holding its state in memory (libuv creates an io_uring
instance: `checkpoint-io-uring: deny`), and PostgreSQL running as its own non-root user with
data in shared buffers (System V shared memory: `checkpoint-ipc-namespace: private`), each with
the capabilities the webhook gives a container that asks for that key, and nothing more."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_harness import AgentHarness, phases, stop_and_wait
from test_environment import RUNTIME_DEFAULT

from podckpt.agent.capabilities import REQUIRED_CAPABILITIES
from podckpt.agent.exitcodes import CHECKPOINTED
from podckpt.api import contract
from podckpt.devtools.sandbox import Bind, Sandbox, start_sandbox, wait_for
from podckpt.devtools.servers_rootfs import POSTGRES_BIN, user_ids

pytestmark = pytest.mark.criu

#: The runtime's defaults, the agent's required set and what the key costs (SYS_ADMIN).
WITH_SYS_ADMIN = sorted({*RUNTIME_DEFAULT, *REQUIRED_CAPABILITIES, "CAP_SYS_ADMIN"})


@pytest.fixture
def servers(
    servers_rootfs: Path, sandbox_factory: Callable[..., Sandbox], tmp_path: Path
) -> AgentHarness:
    store = tmp_path / "store"
    store.mkdir()
    labels = tmp_path / "podinfo"
    labels.mkdir()
    return AgentHarness(servers_rootfs, sandbox_factory, store, labels)


def _get(box: Sandbox, url: str) -> dict[str, int]:
    script = (
        f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
    )
    done = box.exec(["python3", "-c", script], timeout=30)
    assert done.returncode == 0, (done.stderr.decode(), box.stderr_text()[-2000:])
    return json.loads(done.stdout)


def test_node_http_server_keeps_its_memory_across_two_deaths(servers: AgentHarness) -> None:
    argv = ["node", "/apps/node_counter.js"]
    # Without the key: libuv's io_uring instance cannot be dumped, and the agent says which
    # key fixes it (the server gets its SIGTERM and stops as it would without podckpt).
    # (Measured: Debian's Node.js 20 / libuv 1.50 opens three rings, UV_USE_IO_URING=0 too.)
    plain = servers.start(argv, env={"UV_USE_IO_URING": "0"})
    assert wait_for(lambda: "listening" in plain.stdout_text(), 30), plain.stderr_text()
    stop_and_wait(plain)
    refused = phases(plain, "dump", "failed")
    assert refused, plain.stderr_text()
    assert "holds an io_uring instance" in refused[0]["error"]
    assert "memverge.ai/checkpoint-io-uring: deny" in refused[0]["error"]

    keys = {"memverge.ai/checkpoint-io-uring": "deny"}
    box = servers.start(argv, annotations=keys, capabilities=WITH_SYS_ADMIN)
    assert wait_for(lambda: "listening" in box.stdout_text(), 30), box.stderr_text()
    first = [_get(box, "http://127.0.0.1:8080/") for _ in range(3)]
    assert [r["hits"] for r in first] == [1, 2, 3]
    done = box.exec(["sh", "-c", f"ls -l /proc/{first[0]['pid']}/fd"])
    assert "io_uring" not in done.stdout.decode(), "the filter made libuv fall back to epoll"
    last = first[-1]
    for _ in range(2):
        assert stop_and_wait(box) == CHECKPOINTED, box.stderr_text()
        box = servers.start(argv, annotations=keys, capabilities=WITH_SYS_ADMIN)
        assert wait_for(lambda: phases(box, "restore", "ok"), 30), box.stderr_text()  # noqa: B023
        reply = _get(box, "http://127.0.0.1:8080/")
        assert reply["hits"] == last["hits"] + 1, "the count in memory went on"
        assert reply["started"] == last["started"], "the same process, not a new one"
        last = reply
    assert "listening" not in box.stdout_text(), "never started again"


def _psql(box: Sandbox, sql: str) -> str:
    done = box.exec(
        [f"{POSTGRES_BIN}/psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres",
         "-tAqc", sql],
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, (done.stderr.decode(), box.stderr_text()[-3000:])
    return done.stdout.decode().strip()


def test_postgresql_as_its_own_user_keeps_shared_buffers_across_two_deaths(
    servers: AgentHarness, servers_rootfs: Path, tmp_path: Path
) -> None:
    uid, gid = user_ids(servers_rootfs, "postgres")
    data = tmp_path / "pgdata"  # the database's volume
    data.mkdir(mode=0o700)
    os.chown(data, uid, gid)
    binds = [Bind(data, "/var/lib/postgresql/data")]
    initdb = start_sandbox(
        servers_rootfs,
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
         f"{POSTGRES_BIN}/initdb", "--auth=trust", "-U", "postgres", "-D",
         "/var/lib/postgresql/data"],
        binds=binds,
    )  # fmt: skip
    with initdb:
        assert initdb.wait(120) == 0, initdb.stdout_text() + initdb.stderr_text()

    argv = [
        f"{POSTGRES_BIN}/postgres", "-D", "/var/lib/postgresql/data",
        "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=/tmp",
        "-c", "shared_buffers=32MB",
    ]  # fmt: skip
    # What the webhook hands the agent for `runAsUser: <postgres>` and the IPC key.
    user = [contract.USER_OPTION, f"{uid}:{gid}"]
    keys = {"memverge.ai/checkpoint-ipc-namespace": "private"}

    def start() -> Sandbox:
        return servers.start(
            argv, annotations=keys, agent_args=user, binds=binds, capabilities=WITH_SYS_ADMIN
        )

    box = start()
    assert wait_for(lambda: "ready to accept connections" in box.stderr_text(), 60), (
        box.stderr_text()[-3000:]
    )
    # An UNLOGGED table lives in shared buffers and is emptied by the crash recovery a fresh
    # start after a kill would run; the postmaster's start time is that of the process.
    _psql(
        box, "CREATE UNLOGGED TABLE memo (n int); INSERT INTO memo SELECT generate_series(1, 1000)"
    )
    _psql(box, "CREATE TABLE ledger (n int); INSERT INTO ledger VALUES (1)")
    started = _psql(box, "SELECT pg_postmaster_start_time()")
    users = box.exec(["sh", "-c", "ps -o user= -p $(pgrep -d, postgres)"]).stdout.decode()
    assert set(users.split()) == {"postgres"}, users
    for round_ in (2, 3):
        assert stop_and_wait(box, grace=60) == CHECKPOINTED, box.stderr_text()[-3000:]
        box = start()
        assert wait_for(lambda: phases(box, "restore", "ok"), 60), box.stderr_text()[-3000:]  # noqa: B023
        assert _psql(box, "SELECT pg_postmaster_start_time()") == started, "restored, not restarted"
        assert _psql(box, "SELECT count(*) FROM memo") == "1000", "shared buffers kept"
        _psql(box, f"INSERT INTO ledger VALUES ({round_})")
        assert _psql(box, "SELECT string_agg(n::text, ',' ORDER BY n) FROM ledger") == ",".join(
            str(n) for n in range(1, round_ + 1)
        )
    assert "ready to accept connections" not in box.stderr_text(), "never started again"
