"""A root filesystem with real servers from Debian, for the agent tests of widely used runtimes:
Node.js (libuv, which creates an io_uring instance) and PostgreSQL (System V shared memory,
several processes of one non-root user).

It is the CRIU root filesystem (rootfs.criu_rootfs: trixie minbase, python3, procps, CRIU
from sid) plus trixie's `nodejs` and `postgresql-17`, built once by copying that root and
installing the packages in it, cached as `$PODCKPT_CACHE/rootfs/<name>` under the same lock
and rename-into-place rule as every root filesystem.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from podckpt.devtools.rootfs import (
    CRIU_ROOTFS_NAME,
    RootfsError,
    _in_chroot,
    cached_build,
    criu_rootfs,
)

#: Bump when the recipe changes (part of the cache key).
_RECIPE = 1
PACKAGES = ("nodejs", "postgresql-17")
SERVERS_ROOTFS_NAME = f"{CRIU_ROOTFS_NAME}-servers-r{_RECIPE}"
#: Where Debian puts PostgreSQL 17's programs (they are not on PATH).
POSTGRES_BIN = "/usr/lib/postgresql/17/bin"


def _build(root: Path) -> None:
    base = criu_rootfs()
    done = subprocess.run(
        ["cp", "-a", "--one-file-system", f"{base}/.", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RootfsError(f"copying {base} failed: {done.stderr.strip()[-300:]}")
    _in_chroot(
        root,
        "export DEBIAN_FRONTEND=noninteractive\n"
        "apt-get update -qq\n"
        # No cluster is created: the tests make their own with initdb.
        "mkdir -p /etc/postgresql-common/createcluster.d\n"
        "echo 'create_main_cluster = false' >"
        " /etc/postgresql-common/createcluster.d/podckpt.conf\n"
        f"apt-get install -y -qq -t trixie {' '.join(PACKAGES)} >/dev/null\n"
        "apt-get clean\n"
        "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/*"
        " /usr/share/info/* /var/log/*.log /var/log/apt/*\n",
        "apt-get install " + " ".join(PACKAGES),
    )
    for program in ("/usr/bin/node", f"{POSTGRES_BIN}/postgres", f"{POSTGRES_BIN}/initdb"):
        if not (root / program.lstrip("/")).exists():
            raise RootfsError(f"{program} missing after installing {' '.join(PACKAGES)}")


def servers_rootfs() -> Path:
    """The cached root with CRIU, python3, Node.js and PostgreSQL 17."""
    return cached_build(SERVERS_ROOTFS_NAME, _build)


def user_ids(root: Path, name: str) -> tuple[int, int]:
    """(uid, gid) of a user of the root filesystem (`postgres`)."""
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise RootfsError(f"no user {name!r} in {root}/etc/passwd")
