"""CRIU's own test programs (zdtm static tests), fetched and built once, cached by version.

The source is Debian's upstream tarball of CRIU (`criu_<version>.orig.tar.xz`, which holds
`test/zdtm` and CRIU's COPYING), from the Debian mirror the project already uses for its root
filesystems and bundle, pinned by version and sha256: the tests must be those of the CRIU the
bundle ships (4.2.1), never whatever the mirror has today. Nothing of CRIU is vendored in the
repository; the tests are built on this machine with its gcc/make (`hack/setup.sh`) into

    $PODCKPT_CACHE/zdtm/criu-<version>/             the extracted source (test/zdtm, COPYING)
    $PODCKPT_CACHE/zdtm/criu-<version>-build-<key>/ static/<test> binaries, zdtm-wrap

(`key` hashes the list of tests and this recipe), each built in a temporary directory that
is renamed into place when complete, under a file lock, as the root filesystems are.
`PODCKPT_CRIU_SOURCE=/path/criu_<version>.orig.tar.xz` uses a local copy (same sha256).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from podckpt.bundle.debian import debian_mirror
from podckpt.devtools.rootfs import RootfsError, cached_build

#: The CRIU whose tests are run: the bundle's (Debian sid's criu 4.2.1-1).
CRIU_VERSION = "4.2.1"
ORIG_SHA256 = "29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9"
SOURCE_ENV = "PODCKPT_CRIU_SOURCE"
#: Bump when the build recipe changes (part of the cache key).
_RECIPE = 1
_HERE = Path(__file__).parent


class ZdtmError(RootfsError):
    """The zdtm tests cannot be fetched or built here (the message says why)."""


def cache_dir() -> Path:
    return Path(os.environ.get("PODCKPT_CACHE", "/var/cache/podckpt")) / "zdtm"


def _download(dest: Path) -> None:
    local = os.environ.get(SOURCE_ENV)
    if local:
        shutil.copyfile(local, dest)
    else:
        url = f"{debian_mirror()}/pool/main/c/criu/criu_{CRIU_VERSION}.orig.tar.xz"
        try:
            response = urllib.request.urlopen(url, timeout=60)  # noqa: S310 - our mirror
            with response, dest.open("wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError) as exc:
            raise ZdtmError(
                f"cannot fetch CRIU {CRIU_VERSION}'s source ({url}): {exc}; set {SOURCE_ENV}"
                " to a local copy of that file"
            ) from exc
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    if digest != ORIG_SHA256:
        raise ZdtmError(
            f"criu_{CRIU_VERSION}.orig.tar.xz has sha256 {digest}, expected {ORIG_SHA256}"
        )


def _cached(suffix: str, builder: Callable[[Path], None]) -> Path:
    return cached_build(f"criu-{CRIU_VERSION}{suffix}", builder, base=cache_dir())


def source() -> Path:
    """The extracted CRIU source tree (test/zdtm, COPYING)."""
    top = f"criu-{CRIU_VERSION}"

    def extract(tmp: Path) -> None:
        tarball = tmp / "orig.tar.xz"
        _download(tarball)
        with tarfile.open(tarball) as tar:
            wanted = [
                m
                for m in tar.getmembers()
                if m.name.startswith(f"{top}/test/zdtm/") or m.name == f"{top}/COPYING"
            ]
            tar.extractall(tmp, members=wanted, filter="data")
        tarball.unlink()
        for entry in (tmp / top).iterdir():
            entry.rename(tmp / entry.name)
        (tmp / top).rmdir()

    return _cached("", extract)


def build(tests: Iterable[str]) -> Path:
    """A directory with `static/<test>` for each test, `zdtm-wrap`, `rawinit.py` and CRIU's
    COPYING (the tests are GPL-2.0 programs of CRIU)."""
    names = sorted(set(tests))
    wrap_c = _HERE / "wrap.c"
    rawinit = _HERE / "rawinit.py"
    recipe = "\n".join([str(_RECIPE), *names, wrap_c.read_text(), rawinit.read_text()])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    src = source()

    def compile_tests(tmp: Path) -> None:
        for tool in ("gcc", "make"):
            if shutil.which(tool) is None:
                raise ZdtmError(f"{tool} not found: run hack/setup.sh")
        work = Path(tempfile.mkdtemp(prefix="zdtm-build-", dir=tmp))
        shutil.copytree(src / "test" / "zdtm", work / "zdtm", symlinks=True)
        static = work / "zdtm" / "static"
        done = subprocess.run(
            ["make", "-s", f"-j{os.cpu_count() or 2}", "-C", str(static), *names],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-8:])
            raise ZdtmError(f"building the zdtm tests failed: {tail}")
        (tmp / "static").mkdir()
        for name in names:
            shutil.copy2(static / name, tmp / "static" / name)
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-o", str(tmp / "zdtm-wrap"), str(wrap_c)], check=True
        )
        shutil.copy2(rawinit, tmp / "rawinit.py")
        shutil.copy2(src / "COPYING", tmp / "COPYING")
        shutil.rmtree(work)

    return _cached(f"-build-{key}", compile_tests)
