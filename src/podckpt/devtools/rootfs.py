"""Root filesystems for the sandbox, built once and cached by version key.

CRIU must be >= 4.2 on kernels >= 6.16 (older releases cannot dump any socket), and only
Debian sid ships it; the host's libc must not be upgraded, so CRIU lives in a root
filesystem of its own: Debian trixie minbase with sid pinned low and only criu (plus what it
needs) taken from sid.

Builds take tens of seconds and several pytest processes may ask at once, so every root is
built under a file lock into a temporary directory that is renamed into place only when
complete: a cached directory is always a finished one.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from podckpt.bundle.debian import debian_mirror

CACHE_DIR = Path(os.environ.get("PODCKPT_CACHE", "/var/cache/podckpt"))

# Bump the recipe number whenever criu_rootfs's recipe changes: it is part of the cache key.
_CRIU_RECIPE = 1
CRIU_ROOTFS_NAME = f"criu-trixie-sid-r{_CRIU_RECIPE}"
_CRIU_STAMP = ".podckpt-criu-version"
_PACKAGES = ("python3", "procps")


class RootfsError(RuntimeError):
    """A root filesystem cannot be built here (tool missing, mirror unreachable, ...)."""


def rootfs_dir() -> Path:
    # Read at call time so tests and CI can point PODCKPT_CACHE elsewhere after import.
    return Path(os.environ.get("PODCKPT_CACHE", str(CACHE_DIR))) / "rootfs"


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cached_build(name: str, builder: Callable[[Path], None], *, base: Path | None = None) -> Path:
    """Return CACHE/rootfs/<name> (or `base`/<name>), running builder(tmpdir) first if it is
    not cached yet.

    The name is the cache key: put every version that matters into it. The builder gets an
    empty directory on the same filesystem and fills it; on any exception the partial tree
    is removed and nothing is cached.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise ValueError(f"unsafe cache name {name!r}")
    base = rootfs_dir() if base is None else base
    final = base / name
    if final.is_dir():
        return final
    base.mkdir(parents=True, exist_ok=True)
    with _locked(base / f".{name}.lock"):
        if final.is_dir():  # another process finished it while we waited
            return final
        for stale in base.glob(f".{name}.tmp-*"):  # left by a builder that was killed
            _remove_tree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=base))
        try:
            tmp.chmod(0o755)
            builder(tmp)
            tmp.rename(final)
        except BaseException:
            _remove_tree(tmp)
            raise
    return final


def _remove_tree(path: Path) -> None:
    # A failed debootstrap may leave proc/sys mounted inside; never recurse into a mount.
    mounted = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(str(path) + "/")
    ]
    if mounted:
        raise RootfsError(f"not removing {path}: still mounted inside: {', '.join(mounted)}")
    shutil.rmtree(path, ignore_errors=True)


def _check_mirror(suite: str) -> None:
    url = f"{debian_mirror()}/dists/{suite}/Release"
    try:
        with urllib.request.urlopen(url, timeout=15):  # noqa: S310 - our own mirror URL
            pass
    except (urllib.error.URLError, OSError) as exc:
        raise RootfsError(f"Debian mirror unreachable ({url}): {exc}") from exc


def _run(argv: list[str], what: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise RootfsError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def _in_chroot(root: Path, script: str, what: str) -> str:
    # A private mount namespace: the proc mount that maintainer scripts want vanishes with it.
    return _run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "chroot",
            str(root),
            "/bin/sh",
            "-euc",
            "mount -t proc proc /proc\n" + script,
        ],
        what,
    )


def require_root_and_debootstrap() -> None:
    """Raise RootfsError (one line) when this machine cannot build root filesystems."""
    if os.geteuid() != 0:
        raise RootfsError("building root filesystems needs root")
    for tool in ("debootstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            raise RootfsError(f"{tool} not found: run hack/setup.sh (apt-get install {tool})")


def _build_criu_rootfs(root: Path) -> None:
    require_root_and_debootstrap()
    _check_mirror("trixie")
    _check_mirror("sid")
    _run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(_PACKAGES)}",
            "trixie",
            str(root),
            debian_mirror(),
        ],
        "debootstrap trixie",
    )
    (root / "etc/apt/sources.list.d/sid.list").write_text(f"deb {debian_mirror()} sid main\n")
    (root / "etc/apt/preferences.d/sid").write_text(
        "Package: *\nPin: release n=sid\nPin-Priority: 100\n"
    )
    (root / "etc/apt/apt.conf.d/99podckpt").write_text(
        'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
        # The mirror's sid Release can be past Valid-Until relative to this machine's clock
        # (seen here: "Release file ... is expired"); the signature is still checked.
        'Acquire::Check-Valid-Until "false";\n'
    )
    _in_chroot(
        root,
        "export DEBIAN_FRONTEND=noninteractive\n"
        "apt-get update -qq\n"
        "apt-get install -y -qq -t sid criu >/dev/null\n"
        "apt-get clean\n"
        "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/*"
        " /usr/share/info/* /var/log/*.log /var/log/apt/*\n",
        "apt-get install -t sid criu",
    )
    out = _in_chroot(root, "criu --version", "criu --version")
    match = re.search(r"Version:\s*(\S+)", out)
    if match is None:
        raise RootfsError(f"cannot parse `criu --version`: {out.strip()!r}")
    version = match.group(1)
    if _version_tuple(version) < (4, 2):
        raise RootfsError(f"sid gave CRIU {version}, need >= 4.2")
    (root / _CRIU_STAMP).write_text(version + "\n")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def criu_rootfs() -> Path:
    """The cached trixie root with python3, procps and CRIU >= 4.2 at /usr/sbin/criu."""
    return cached_build(CRIU_ROOTFS_NAME, _build_criu_rootfs)


def criu_version(rootfs: Path) -> str:
    """The CRIU version recorded when the root was built, e.g. "4.2.1"."""
    try:
        return (rootfs / _CRIU_STAMP).read_text().strip()
    except FileNotFoundError as exc:
        raise RootfsError(f"{rootfs} has no CRIU version stamp: not a criu_rootfs()") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m podckpt.devtools.rootfs")
    parser.add_argument("command", choices=["build"], help="build (or load) the CRIU rootfs")
    parser.parse_args(argv)
    try:
        path = criu_rootfs()
    except RootfsError as exc:
        print(f"rootfs: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
