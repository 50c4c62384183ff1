"""Pure parts of the agent's transparency work: CRIU arguments for workload options, which
options a restore needs, the container's streams, task states read from CRIU images, and the
io_uring seccomp filter (run for real in a forked child when this process may install it)."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import struct
from pathlib import Path

import pytest

from podckpt.agent import criu, images, isolation, manifest, stdio
from podckpt.agent.criurestore import inherit_map
from podckpt.agent.errors import GenerationInvalidError
from podckpt.agent.manifest import Manifest
from podckpt.agent.restorable import restore_options
from podckpt.api import IoUring, IpcNamespace, parse_settings


def test_workload_options_reach_criu_and_replace_the_defaults_they_conflict_with() -> None:
    dump = criu.dump_args(
        300,
        Path("/g/images"),
        privileged=False,
        options=("tcp-established", "link-remap", "ghost-limit=1G"),
        externals=("--external=tty[8800:1a]",),
    )
    assert "--tcp-established" in dump
    assert "--tcp-close" not in dump
    assert "--network-lock=nftables" in dump
    assert "--link-remap" in dump
    assert "--ghost-limit=1G" in dump
    assert "--ghost-limit=67108864" not in dump
    assert "--external=tty[8800:1a]" in dump
    assert dump.count("--file-locks") == 1
    plain = criu.dump_args(300, Path("/g/images"), privileged=True)
    assert "--tcp-close" in plain
    assert "--network-lock=nftables" not in plain


def _manifest(body: dict[str, object]) -> Manifest:
    return Manifest("g", 2, authenticated=False, files={}, body=body)


def test_a_restore_takes_what_its_dump_needs_then_the_restore_options() -> None:
    dumped = _manifest({"criu_options": ["tcp-established", "link-remap", "shell-job"]})
    assert restore_options(dumped, ()) == ("tcp-established", "shell-job")
    assert restore_options(dumped, ("skip-file-rwx-check",)) == (
        "tcp-established",
        "shell-job",
        "skip-file-rwx-check",
    )
    # The restore may decide to close the connections after all.
    assert restore_options(dumped, ("tcp-close",)) == ("shell-job", "tcp-close")
    assert restore_options(_manifest({}), ("link-remap",)) == ()  # a dump-only option


def test_inherit_map_covers_terminals_and_unseen_files() -> None:
    streams = {"0": "tty[8800:1a]", "1": "tty[8800:1a]", "2": "file[2f:99]"}
    assert inherit_map(streams) == {101: "tty[8800:1a]", 102: "file[2f:99]"}
    assert stdio.dump_externals(streams) == [
        "--external=tty[8800:1a]",
        "--external=file[2f:99]",
    ]
    assert stdio.dump_externals({"0": "/dev/null", "1": "pipe:[3]"}) == []


def test_stream_identities_of_this_process(tmp_path: Path) -> None:
    read, write = os.pipe()
    try:
        assert stdio.identity("self", read) == os.readlink(f"/proc/self/fd/{read}")
        assert stdio.identity("self", read).startswith("pipe:[")
    finally:
        os.close(read)
        os.close(write)
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        assert stdio.identity("self", fd) == str(tmp_path / "f")
        # The same file seen from a mount namespace that lacks its mount: an external file.
        ident = stdio.identity("self", fd, visible_mounts={-1})
        assert ident == f"file[{stdio._fdinfo_mnt_id('self', fd):x}:{os.fstat(fd).st_ino:x}]"
    finally:
        os.close(fd)
    master, slave = os.openpty()
    try:
        st = os.fstat(slave)
        assert stdio.identity("self", slave) == f"tty[{st.st_rdev:x}:{st.st_dev:x}]"
    finally:
        os.close(master)
        os.close(slave)


def _core_image(state: int | None, stop_signo: int = 0) -> bytes:
    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    def field(number: int, payload: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    message = varint(1 << 3) + varint(1)  # mtype = X86_64
    message += field(2, b"\x08\x01")  # thread_info: opaque to the reader
    if state is not None:
        tc = varint(1 << 3) + varint(state) + varint(2 << 3) + varint(0) + field(6, b"app")
        if stop_signo:
            tc += varint(21 << 3) + varint(stop_signo)
        message += field(3, tc)
    return struct.pack("<III", images.IMG_COMMON_MAGIC, images.CORE_MAGIC, len(message)) + message


def test_stopped_tasks_come_from_the_core_images(tmp_path: Path) -> None:
    (tmp_path / "core-300.img").write_bytes(_core_image(1))  # alive
    (tmp_path / "core-301.img").write_bytes(_core_image(3))  # stopped
    (tmp_path / "core-304.img").write_bytes(_core_image(3, stop_signo=20))  # ^Z
    (tmp_path / "core-302.img").write_bytes(_core_image(None))  # a thread of 300
    (tmp_path / "pstree.img").write_bytes(b"\0" * 16)
    assert images.stopped_tasks(tmp_path) == {301: 0, 304: 20}
    (tmp_path / "core-303.img").write_bytes(b"garbage")
    assert images.stopped_tasks(tmp_path) is None  # unreadable: the caller uses /proc


def test_isolation_is_the_webhooks_hand_over_else_the_pods_keys() -> None:
    keys = parse_settings(
        {},
        {
            "memverge.ai/checkpoint-ipc-namespace": "private",
            "memverge.ai/checkpoint-io-uring": "deny",
        },
    )
    assert isolation.decide(keys, {}) == isolation.Isolation(True, True)
    assert isolation.decide(keys, {isolation.IPC_NAMESPACE_ENV: "pod"}).private_ipc is False
    auto = parse_settings({}, {})
    assert auto.ipc_namespace is IpcNamespace.AUTO
    assert auto.io_uring is IoUring.ALLOW
    assert isolation.decide(auto, {}) == isolation.Isolation()
    assert isolation.decide(auto, {isolation.IPC_NAMESPACE_ENV: "private"}).private_ipc


def test_isolation_without_cap_sys_admin_is_refused_by_name() -> None:
    with pytest.raises(Exception, match="checkpoint-io-uring: deny needs CAP_SYS_ADMIN"):
        isolation.check(isolation.Isolation(deny_io_uring=True), mask=0)
    isolation.check(isolation.Isolation(deny_io_uring=True), mask=1 << 21)
    isolation.check(isolation.Isolation(), mask=0)


def _may_install_filters() -> bool:
    with open("/proc/self/status") as status:
        eff = next(int(line.split()[1], 16) for line in status if line.startswith("CapEff:"))
    return bool(eff >> 21 & 1)


@pytest.mark.skipif(not _may_install_filters(), reason="needs CAP_SYS_ADMIN")
def test_the_filter_makes_io_uring_setup_fail_with_enosys_and_nothing_else() -> None:
    preexec = isolation.preexec(isolation.Isolation(deny_io_uring=True), terminal=False, user=None)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            preexec()
            libc = ctypes.CDLL(None, use_errno=True)
            params = ctypes.create_string_buffer(120)
            result = libc.syscall(425, 4, params)
            code = ctypes.get_errno() if result < 0 else 0
            os.write(write, struct.pack("ii", code, os.getpid() > 0))
        finally:
            os._exit(0)
    os.close(write)
    data = os.read(read, 8)
    os.waitpid(pid, 0)
    os.close(read)
    code, other_syscalls_work = struct.unpack("ii", data)
    assert code == errno.ENOSYS
    assert other_syscalls_work


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("criu_options", ["external=mnt[]:m"], "'external' is not an allowed CRIU option"),
        ("criu_options", "tcp-established", "criu_options is not a list of strings"),
        ("criu_options", ["--tcp-established"], "criu_options are not canonical"),
        ("stopped_pids", [300, "301"], "stopped_pids is not a list of PIDs"),
    ],
)
def test_a_manifest_cannot_smuggle_options_to_criu(field: str, value: object, message: str) -> None:
    body = {
        "generation": "g",
        "container": "app",
        "store": "id/app",
        "checksums": {"images/core-1.img": {"size": 1, "sha256": "0" * 64}},
        field: value,
    }
    data = manifest.seal(body, manifest.Trust())
    with pytest.raises(GenerationInvalidError, match=re.escape(message)):
        manifest.parse(data, name="g", container="app", store_id="id/app", trust=manifest.Trust())
    body[field] = []
    ok = manifest.parse(
        manifest.seal(body, manifest.Trust()),
        name="g",
        container="app",
        store_id="id/app",
        trust=manifest.Trust(),
    )
    assert ok.criu_options == ()
    assert ok.stopped_pids == frozenset()


@pytest.mark.parametrize("value", ["342", 1 << 22, 299, True])
def test_a_manifest_highest_pid_must_be_a_pid_at_or_above_the_root(value: object) -> None:
    """It sets how far a restore burns the PID counter (pids.clearing_floor)."""
    body = {
        "generation": "g",
        "container": "app",
        "store": "id/app",
        "checksums": {"images/core-1.img": {"size": 1, "sha256": "0" * 64}},
        "root_pid": 300,
        "highest_pid": value,
    }

    def parse() -> manifest.Manifest:
        data = manifest.seal(body, manifest.Trust())
        return manifest.parse(
            data, name="g", container="app", store_id="id/app", trust=manifest.Trust()
        )

    with pytest.raises(GenerationInvalidError, match="highest_pid is not a pid above root_pid"):
        parse()
    body["highest_pid"] = 342
    assert parse().highest_pid == 342
    del body["highest_pid"]
    assert parse().highest_pid is None  # an older agent's generation
