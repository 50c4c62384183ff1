"""Pure parts of the agent: which mounts are the container's own, --inherit-fd, argv, exit codes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from podckpt.agent import criu, exitcodes, filechoice, files
from podckpt.agent.criurestore import inherit_map

MOUNTINFO = """\
2087 1700 0:63 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
2088 2087 0:66 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
2089 2087 0:67 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
2090 2089 0:68 / /dev/shm rw,nosuid,nodev,noexec - tmpfs shm rw,size=65536k
2091 2087 259:1 /var/lib/kubelet/pods/x/volumes/store /store rw,relatime - ext4 /dev/vda1 rw
2092 2087 0:70 / /var/run/secrets/kubernetes.io/serviceaccount ro,relatime - tmpfs tmpfs rw
2093 2087 0:71 / /tmp rw,nosuid,nodev - tmpfs tmpfs rw
2094 2087 0:72 / /store/cache rw - tmpfs tmpfs rw
"""


def _mounts(tmp_path: Path) -> dict[int, filechoice.Mount]:
    proc = tmp_path / "proc" / "1"
    proc.mkdir(parents=True)
    (proc / "mountinfo").write_text(MOUNTINFO)
    original = filechoice.PROC
    filechoice.PROC = tmp_path / "proc"
    try:
        return filechoice.read_mounts(1)
    finally:
        filechoice.PROC = original


def test_own_mounts_are_the_root_and_writable_tmpfs_but_not_volumes(tmp_path: Path) -> None:
    mounts = _mounts(tmp_path)
    roots, tmpfs = filechoice.own_mount_ids(mounts, exclude=["/store"])
    assert roots == {2087}
    # /dev, /dev/shm, /tmp: yes; the read-only secret, anything under the store: no.
    assert tmpfs == {2089, 2090, 2093}
    assert filechoice.mount_of("/dev/shm/x", mounts) == mounts[2090]
    assert filechoice.mount_of("/var/log/app.log", mounts) == mounts[2087]


def test_save_and_put_back_keep_content_mode_and_times(tmp_path: Path) -> None:
    src = tmp_path / "app" / "data"
    src.mkdir(parents=True)
    (src / "state").write_text("hello")
    os.chmod(src / "state", 0o640)
    os.utime(src / "state", ns=(1_000_000_000, 2_000_000_000))
    dest = tmp_path / "gen"
    dest.mkdir()
    found, dirs = filechoice.expand([str(src)])
    entries = files.save(found, dirs, dest)
    assert {e["path"] for e in entries} >= {str(src), str(src / "state")}
    (src / "state").unlink()
    written = files.put_back(dest)
    assert written == [str(src / "state")]
    assert (src / "state").read_text() == "hello"
    assert (src / "state").stat().st_mode & 0o777 == 0o640
    assert (src / "state").stat().st_mtime_ns == 2_000_000_000


def test_inherit_map_passes_each_pipe_once() -> None:
    assert inherit_map({"0": "/dev/null", "1": "pipe:[11]", "2": "pipe:[11]"}) == {101: "pipe:[11]"}
    assert inherit_map({"1": "pipe:[11]", "2": "pipe:[12]", "0": "pipe:[10]"}) == {
        100: "pipe:[10]",
        101: "pipe:[11]",
        102: "pipe:[12]",
    }


def test_dump_and_restore_arguments() -> None:
    dump = criu.dump_args(300, Path("/g/images"), privileged=False, irmap_scan_paths=("/etc",))
    assert dump[:4] == ["-t", "300", "-D", "/g/images"]
    assert "--leave-stopped" in dump
    assert "--irmap-scan-path=/etc" in dump
    assert "--unprivileged" in dump
    assert "--tcp-close" in dump
    restore = criu.restore_args(
        Path("/g/images"), Path("/g/pid"), {101: "pipe:[5]"}, privileged=True
    )
    assert "--restore-sibling" in restore
    assert "--restore-detached" in restore
    assert "--inherit-fd=fd[101]:pipe:[5]" in restore
    assert "--unprivileged" not in restore


def test_locate_prefers_env_then_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "criu").mkdir(parents=True)
    exe = bundle / "criu" / "criu"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert criu.locate({"PODCKPT_BUNDLE": str(bundle), "PATH": ""}) == str(exe)
    assert criu.locate({"PODCKPT_CRIU": str(exe), "PATH": ""}) == str(exe)


def test_wait_status_to_exit_code() -> None:
    assert exitcodes.from_wait_status(7 << 8) == 7
    assert exitcodes.from_wait_status(signal.SIGKILL) == 128 + signal.SIGKILL
    reserved = {exitcodes.AGENT_FAILURE, exitcodes.RESTORE_FAILURE}
    assert not reserved & {0, 1, 2, *range(126, 193)}
