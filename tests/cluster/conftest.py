"""Shared fixtures of the cluster smoke tests: a busybox root filesystem and its image."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from podckpt.devtools.cluster.cluster import Cluster

BUSYBOX_REF = "podckpt.local/busybox:smoke"


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal root filesystem: Debian's static busybox and a few applet links."""
    dest = tmp_path_factory.mktemp("busybox") / "rootfs"
    busybox = shutil.which("busybox") or "/bin/busybox"
    (dest / "bin").mkdir(parents=True)
    shutil.copy2(busybox, dest / "bin" / "busybox")
    for applet in ("sh", "echo", "cat", "sleep", "ls", "grep", "id"):
        (dest / "bin" / applet).symlink_to("busybox")
    for d in ("tmp", "proc", "sys", "dev", "etc", "data"):
        (dest / d).mkdir()
    return dest


@pytest.fixture(scope="session")
def busybox_image(node_cluster: Cluster, busybox_rootfs: Path) -> str:
    """``podckpt.local/busybox:smoke`` loaded into the node's containerd."""
    return node_cluster.load_image(busybox_rootfs, BUSYBOX_REF, cmd=["sh"])
