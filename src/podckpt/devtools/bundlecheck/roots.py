"""The four kinds of user image the bundle must work in, as cached root filesystems.

Why these four: together they remove every crutch the bundle could lean on by accident.
  busybox  - a shell and no libc (static busybox);
  static   - one static binary, no libc, no shell: the scratch image;
  minbase  - Debian minbase (glibc, but an older one than the bundle's, and no Python, no CRIU);
  musl     - musl's loader and libc only, with a musl-linked program (Alpine's situation).
Each holds the test application `/app/counter` (counter.c) built for that root. The roots are
built with the sandbox's `cached_build` (lock, temporary directory, atomic rename), keyed by
the versions of what they contain.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from podckpt.bundle.debian import debian_mirror
from podckpt.devtools.rootfs import RootfsError, cached_build, require_root_and_debootstrap

_COUNTER = Path(__file__).resolve().parent / "counter.c"
COUNTER = "/app/counter"
"""Path of the test application inside every root."""


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RootfsError(f"{' '.join(argv[:3])} failed: {(done.stdout + done.stderr)[-1500:]}")
    return done.stdout


def _pkg_version(pkg: str) -> str:
    return _run(["dpkg-query", "-W", "-f=${Version}", pkg]).strip().replace(":", "_")


def _key(*parts: str) -> str:
    h = hashlib.sha256(_COUNTER.read_bytes())
    for p in parts:
        h.update(p.encode())
    return h.hexdigest()[:12]


def _counter(root: Path, cc: list[str]) -> None:
    (root / "app").mkdir(parents=True, exist_ok=True)
    _run([*cc, "-O2", "-Wall", "-o", str(root / COUNTER.lstrip("/")), str(_COUNTER)])


def _skeleton(root: Path) -> None:
    # Mount points a runtime expects to find; everything else is the image's business.
    for d in ("proc", "dev", "sys", "tmp"):
        (root / d).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)


def _busybox(root: Path) -> None:
    _skeleton(root)
    (root / "bin").mkdir()
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for applet in _run(["/bin/busybox", "--list"]).split():
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    _counter(root, ["gcc", "-static"])


def _static(root: Path) -> None:
    # Nothing but the program: no /bin, no /lib, no /etc (what FROM scratch gives).
    _counter(root, ["gcc", "-static"])


def _musl(root: Path) -> None:
    _skeleton(root)
    libc = Path("/usr/lib/x86_64-linux-musl/libc.so")
    (root / "lib/x86_64-linux-musl").mkdir(parents=True)
    shutil.copy2(libc, root / "lib/x86_64-linux-musl/libc.so")
    (root / "lib/ld-musl-x86_64.so.1").symlink_to("x86_64-linux-musl/libc.so")
    _counter(root, ["musl-gcc"])  # dynamic: PT_INTERP /lib/ld-musl-x86_64.so.1


def _debootstrap(root: Path) -> None:
    require_root_and_debootstrap()
    _run(
        ["unshare", "--mount", "--propagation", "private", "--fork",
         "debootstrap", "--variant=minbase", "bookworm", str(root), debian_mirror()]
    )  # fmt: skip
    for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
        shutil.rmtree(root / d, ignore_errors=True)


def _minbase(root: Path) -> None:
    # The debootstrap (a minute) is cached on its own: a new counter.c only re-copies it.
    base = cached_build("bundle-minbase-base-bookworm", _debootstrap)
    _run(["cp", "-a", f"{base}/.", str(root)])
    _counter(root, ["gcc"])  # dynamic against glibc (the host's bookworm = the root's)


def busybox_root() -> Path:
    """busybox (static) and the static counter: a shell, no libc."""
    return cached_build(
        f"bundle-busybox-{_key('busybox', _pkg_version('busybox-static'))}", _busybox
    )


def static_root() -> Path:
    """Only /app/counter, statically linked: no libc, no shell, no /etc."""
    return cached_build(f"bundle-static-{_key('static', _pkg_version('libc6-dev'))}", _static)


def musl_root() -> Path:
    """musl's loader/libc and a musl-linked counter: no glibc anywhere."""
    return cached_build(f"bundle-musl-{_key('musl', _pkg_version('musl'))}", _musl)


def minbase_root() -> Path:
    """Debian bookworm minbase (glibc 2.36, no Python, no CRIU) with a glibc-linked counter."""
    return cached_build(f"bundle-minbase-bookworm-{_key('minbase')}", _minbase)


ROOTS: dict[str, Callable[[], Path]] = {
    "busybox": busybox_root,
    "static": static_root,
    "minbase": minbase_root,
    "musl": musl_root,
}
"""Every root by name, in the order of the issue: (a) busybox, (b) static, (c) minbase, (d) musl."""
