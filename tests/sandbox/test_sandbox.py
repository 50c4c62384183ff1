"""The sandbox behaves like a runc container, proved with real processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from podckpt.devtools._linux import CAP_NAMES
from podckpt.devtools.rootfs import criu_version
from podckpt.devtools.sandbox import Bind, wait_for

pytestmark = pytest.mark.criu

SLEEP = ["sleep", "infinity"]
# PID 1 that reaps orphans, as a real init (and the agent) does: CRIU needs dead PIDs freed.
REAPER = [
    "python3",
    "-c",
    "import os, time\nwhile True:\n try: os.wait()\n except ChildProcessError: time.sleep(0.05)",
]


def run(box, cmd: str, **kw):
    return box.exec(["sh", "-c", cmd], **kw)


def test_pid1_is_argv_in_own_namespaces(sandbox_factory, criu_rootfs):
    box = sandbox_factory(criu_rootfs, SLEEP, hostname="pod-a")
    assert run(box, "cat /proc/1/cmdline").stdout == b"sleep\0infinity\0"
    assert Path(f"/proc/{box.pid}/cmdline").read_bytes() == b"sleep\0infinity\0"
    assert run(box, "hostname").stdout == b"pod-a\n"
    for ns in ("mnt", "pid", "net", "ipc", "uts"):
        assert os.readlink(f"/proc/{box.pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")


def test_proc_sys_is_read_only(sandbox_factory, criu_rootfs):
    box = sandbox_factory(criu_rootfs, SLEEP)
    res = run(box, "echo 5000 > /proc/sys/kernel/ns_last_pid")
    assert res.returncode != 0
    assert b"Read-only file system" in res.stderr
    mounts = run(box, "cat /proc/mounts").stdout.decode()
    assert "proc /proc/sys proc ro," in mounts
    assert "overlay / overlay rw," in mounts


def test_writable_layer_is_fresh_each_time(sandbox_factory, criu_rootfs):
    a = sandbox_factory(criu_rootfs, SLEEP)
    assert run(a, "echo data > /etc/marker && cat /etc/marker").stdout == b"data\n"
    a.destroy()
    assert not (criu_rootfs / "etc/marker").exists()  # the lower layer is untouched
    b = sandbox_factory(criu_rootfs, SLEEP)
    assert run(b, "test -e /etc/marker").returncode == 1


def test_binds(sandbox_factory, criu_rootfs, tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro/in.txt").write_text("hello")
    (tmp_path / "rw").mkdir()
    box = sandbox_factory(
        criu_rootfs,
        SLEEP,
        binds=[Bind(tmp_path / "ro", "/data/ro", readonly=True), Bind(tmp_path / "rw", "/ckpt")],
    )
    assert run(box, "cat /data/ro/in.txt").stdout == b"hello"
    assert run(box, "touch /data/ro/x").returncode != 0
    assert run(box, "echo saved > /ckpt/out.txt").returncode == 0
    assert (tmp_path / "rw/out.txt").read_text() == "saved\n"


def test_output_and_exit_code(sandbox_factory, criu_rootfs):
    box = sandbox_factory(
        criu_rootfs, ["sh", "-c", "echo out; echo err >&2; (echo grandchild &); sleep 0.2; exit 7"]
    )
    assert box.wait(10) == 7
    assert wait_for(lambda: "grandchild" in box.stdout_text())
    assert box.stdout_text().splitlines()[0] == "out"
    assert box.stderr_text() == "err\n"
    with pytest.raises(RuntimeError):
        box.exec(["true"])


def test_stdio_are_pipes_and_fds_above_2_closed(sandbox_factory, criu_rootfs):
    box = sandbox_factory(criu_rootfs, SLEEP)
    fds = os.listdir(f"/proc/{box.pid}/fd")
    assert sorted(fds) == ["0", "1", "2"]
    assert os.readlink(f"/proc/{box.pid}/fd/1").startswith("pipe:")
    assert os.readlink(f"/proc/{box.pid}/fd/2").startswith("pipe:")
    assert run(box, "readlink /proc/1/fd/0").stdout == b"/dev/null\n"


def test_signals_give_128_plus_signal(sandbox_factory, criu_rootfs):
    box = sandbox_factory(criu_rootfs, SLEEP)
    with pytest.raises(TimeoutError):
        box.wait(0.2)
    box.kill()
    assert box.wait(10) == 128 + signal.SIGKILL
    # PID 1 without a SIGTERM handler ignores it, as in a container: stop() escalates.
    box = sandbox_factory(criu_rootfs, SLEEP)
    assert box.stop(grace=0.5) == 137
    handler = ["sh", "-c", "trap 'exit 3' TERM; while :; do sleep 0.05; done"]
    box = sandbox_factory(criu_rootfs, handler)
    assert wait_for(lambda: b"sleep" in run(box, "ps -e").stdout)
    assert box.stop(grace=10) == 3


def test_capabilities_restricted(sandbox_factory, criu_rootfs):
    box = sandbox_factory(
        criu_rootfs, SLEEP, capabilities=["CAP_CHECKPOINT_RESTORE", "SETPCAP", "net_admin"]
    )
    want = sum(1 << CAP_NAMES.index(n) for n in ("CHECKPOINT_RESTORE", "SETPCAP", "NET_ADMIN"))
    for proc in ("1", "self"):
        status = run(box, f"cat /proc/{proc}/status").stdout.decode()
        caps = dict(line.split(":\t") for line in status.splitlines() if line.startswith("Cap"))
        for key in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"):
            assert int(caps[key], 16) == want, (proc, key, caps[key])


def test_seccomp(sandbox_factory, criu_rootfs):
    box = sandbox_factory(criu_rootfs, SLEEP, seccomp=True)
    assert "Seccomp:\t2" in run(box, "cat /proc/1/status").stdout.decode()
    plain = sandbox_factory(criu_rootfs, SLEEP)
    assert "Seccomp:\t0" in run(plain, "cat /proc/1/status").stdout.decode()


SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8080)); s.listen(); print("listening", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"pong:" + c.recv(100)); c.close()
"""
CLIENT = """
import socket
c = socket.create_connection(("127.0.0.1", 8080), timeout=5); c.sendall(b"ping")
print(c.recv(100).decode())
"""


def test_tcp_server_reachable_from_exec_in_own_netns(sandbox_factory, criu_rootfs):
    box = sandbox_factory(criu_rootfs, ["python3", "-c", SERVER])
    assert wait_for(lambda: "listening" in box.stdout_text())
    assert box.exec(["python3", "-c", CLIENT]).stdout == b"pong:ping\n"
    other = sandbox_factory(criu_rootfs, SLEEP)
    assert os.readlink(f"/proc/{box.pid}/ns/net") != os.readlink(f"/proc/{other.pid}/ns/net")
    assert other.exec(["python3", "-c", CLIENT]).returncode != 0  # a different "pod IP"


def test_criu_version_at_least_4_2(sandbox_factory, criu_rootfs):
    version = criu_version(criu_rootfs)
    assert tuple(int(x) for x in version.split(".")[:2]) >= (4, 2)
    box = sandbox_factory(criu_rootfs, SLEEP)
    assert f"Version: {version}" in run(box, "criu --version").stdout.decode()


def test_criu_dump_and_restore_inside_sandbox(sandbox_factory, criu_rootfs):
    box = sandbox_factory(criu_rootfs, REAPER)
    # `criu check` says "Does not look good" in any runc-like container (no /dev/net/tun,
    # /proc/sys read-only); only its failures beyond those two would matter.
    check = run(box, "criu check").stderr.decode()
    unexpected = [
        line
        for line in check.splitlines()
        if line.startswith("Error") and "tun" not in line and "ns_last_pid" not in line
    ]
    assert not unexpected, check
    start = run(
        box, "setsid sh -c 'while :; do sleep 0.1; done' </dev/null >/dev/null 2>&1 & echo $!"
    )
    pid = int(start.stdout)
    dump = run(box, f"mkdir -p /img && criu dump -t {pid} -D /img -o dump.log -v4", timeout=60)
    assert dump.returncode == 0, run(box, "tail -20 /img/dump.log").stdout.decode()
    assert wait_for(lambda: run(box, f"kill -0 {pid}").returncode != 0)
    restore = run(box, "criu restore -d -D /img -o restore.log -v4", timeout=60)
    assert restore.returncode == 0, run(box, "tail -20 /img/restore.log").stdout.decode()
    assert b"while" in run(box, f"cat /proc/{pid}/cmdline").stdout


def test_destroy_leaves_nothing_mounted(sandbox_factory, criu_rootfs, tmp_path):
    box = sandbox_factory(criu_rootfs, SLEEP, binds=[Bind(tmp_path, "/mnt/host")])
    state, pid = box.state_dir, box.pid
    assert (state / "upper").is_dir()
    box.destroy()
    box.destroy()  # idempotent
    assert not state.exists()
    assert not Path(f"/proc/{pid}").exists()
    mountinfo = Path("/proc/self/mountinfo").read_text()
    assert str(state) not in mountinfo
    assert str(criu_rootfs) not in mountinfo


def test_restore_in_a_new_sandbox_writes_to_its_pipes(sandbox_factory, criu_rootfs, tmp_path):
    """The agent's flow in miniature: dump in one sandbox, restore in a fresh one, and the
    restored app's stdout follows the new container's pipe (via --inherit-fd)."""
    images = tmp_path / "img"
    images.mkdir()
    a = sandbox_factory(criu_rootfs, REAPER, binds=[Bind(images, "/img")])
    # Push the PID counter up so the app's PID is free in the next, fresh PID namespace.
    run(a, "for i in $(seq 300); do /bin/true; done")
    app = "while :; do echo tick; sleep 0.1; done"
    pid = int(run(a, f"setsid sh -c '{app}' </dev/null >/proc/1/fd/1 2>&1 & echo $!").stdout)
    assert wait_for(lambda: "tick" in a.stdout_text())
    pipe = os.readlink(f"/proc/{a.pid}/fd/1")  # "pipe:[N]", what the image refers to
    dump = run(a, f"criu dump -t {pid} -D /img -o dump.log", timeout=60)
    assert dump.returncode == 0, (images / "dump.log").read_text()[-2000:]
    a.destroy()

    b = sandbox_factory(criu_rootfs, REAPER, binds=[Bind(images, "/img")])
    restore = run(
        b,
        f"criu restore -d -D /img -o restore.log --inherit-fd 'fd[3]:{pipe}' 3>/proc/1/fd/1",
        timeout=60,
    )
    assert restore.returncode == 0, (images / "restore.log").read_text()[-2000:]
    assert wait_for(lambda: "tick" in b.stdout_text())
    assert b"sh" in run(b, f"cat /proc/{pid}/cmdline").stdout
