"""Build the agent bundle from Debian packages and the agent's sources.

Technique (measured, see docs/bundle.md): Debian sid's own CPython and CRIU binaries, unchanged,
with the exact shared libraries they need and sid's glibc loader, all in one `lib/` directory;
a tiny static launcher starts them through that loader (`ld.so --library-path`). Nothing is
patched, so what runs is what Debian tested, and the directory works wherever it is put.

Steps:
1. a private apt configuration (in the cache, never the host's sources) resolves the package
   closure of CRIU + CPython in sid and downloads those .debs;
2. the .debs are unpacked into a scratch root;
3. the bundle takes from it the two programs, the stdlib (minus what an agent never imports),
   the extension modules, and - by following DT_NEEDED - exactly the libraries they load;
4. the agent (`podckpt.api`, `podckpt.agent`) is copied into the stdlib directory and everything
   is compiled to unchecked-hash .pyc files, so a fresh start compiles nothing and the copy in an
   emptyDir needs no preserved timestamps.

The result is cached under `$PODCKPT_CACHE/bundle/<key>`; the key hashes the package versions,
this recipe and the agent's sources, so an edited agent gives a new bundle.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from podckpt.api import contract
from podckpt.bundle.debian import debian_mirror

MOUNT_PATH = contract.BUNDLE_MOUNT
"""Where checkpointed containers mount the bundle (the bundle itself is relocatable)."""

BUNDLE_PYTHON = "3.13"
"""CPython minor version in the bundle: Debian trixie's default, the one the agent is tested on."""

BUNDLE_CRIU = (4, 2)
"""Oldest CRIU accepted: kernels >= 6.16 refuse socket options that CRIU < 4.2 reads."""

SUITE = os.environ.get("PODCKPT_BUNDLE_SUITE", "sid")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

# Bump when the recipe changes in a way that the hashed files below do not capture.
_RECIPE = 1
_ROOT_PACKAGES = ("criu", f"python{BUNDLE_PYTHON}-minimal", f"libpython{BUNDLE_PYTHON}-stdlib")
_SRC = Path(__file__).resolve().parent
_PKG_ROOT = _SRC.parent  # src/podckpt
_AGENT_PACKAGES = ("api", "agent")

# Stdlib parts an agent never imports: tests, GUIs, the REPL, packaging tools, documentation.
_STDLIB_DROP = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "turtle.py",
    "ensurepip",
    "pydoc_data",
    "lib2to3",
    "_pyrepl",
    "sqlite3",
    "curses",
    "dbm",
    "venv",
    "config-3.13-x86_64-linux-gnu",
    "site-packages",
    "dist-packages",
    "EXTERNALLY-MANAGED",
    "LICENSE.txt",
}
# Extension modules dropped with them; they would pull in ncurses, readline, Berkeley DB, sqlite.
_DYNLOAD_DROP = re.compile(
    r"^(_test\w*|_ctypes_test|xx\w*|_xxtestfuzz|_curses\w*|readline|_dbm|_gdbm|_sqlite3|_tkinter)"
    r"\."
)
# Loaded with dlopen by glibc (thread cancellation unwinds through libgcc_s), not in DT_NEEDED.
_DLOPENED = ("libgcc_s.so.1",)
_LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib64", "lib64", "usr/lib")
_LOADER = "ld-linux-x86-64.so.2"


class BundleBuildError(RuntimeError):
    """The bundle cannot be built here (a tool is missing, the mirror is unreachable, ...)."""


def bundle_cache_dir() -> Path:
    """`$PODCKPT_CACHE/bundle`, read at call time so tests can point it elsewhere."""
    return Path(os.environ.get("PODCKPT_CACHE", "/var/cache/podckpt")) / "bundle"


def _run(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, check=False, env=env, cwd=cwd, timeout=900
        )
    except FileNotFoundError as exc:
        raise BundleBuildError(f"{argv[0]} not found: run hack/setup.sh") from exc
    if done.returncode != 0:
        raise BundleBuildError(
            f"{' '.join(argv[:4])}... failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    return done.stdout


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class _Apt:
    """apt-get with a private state directory and sources list: the host's apt is untouched."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("etc/apt/preferences.d", "etc/apt/apt.conf.d", "var/lib/apt/lists/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        (root / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
        (root / "var/lib/dpkg/status").touch()
        (root / "etc/apt/sources.list").write_text(
            f"deb [signed-by={KEYRING}] {debian_mirror()} {SUITE} main\n"
        )
        # Valid-Until is off because a mirror snapshot of sid may be older than its Release says.
        (root / "apt.conf").write_text(
            f'Dir "{root}/";\n'
            f'Dir::State::status "{root}/var/lib/dpkg/status";\n'
            'APT::Architecture "amd64";\nAPT::Architectures { "amd64"; };\n'
            'APT::Install-Recommends "false";\nAPT::Sandbox::User "root";\n'
            'Acquire::Check-Valid-Until "false";\n'
        )
        self.env = {**os.environ, "APT_CONFIG": str(root / "apt.conf"), "LC_ALL": "C"}

    def update(self) -> None:
        _run(["apt-get", "update", "-qq"], env=self.env)

    def resolve(self, packages: Iterable[str]) -> list[tuple[str, str]]:
        """The (name, version) closure that installing `packages` into an empty root needs."""
        out = _run(["apt-get", "-s", "install", *packages], env=self.env)
        found = re.findall(r"^Inst (\S+) \((\S+)", out, re.MULTILINE)
        if not found:
            raise BundleBuildError(f"apt resolved nothing for {list(packages)}:\n{out[-1000:]}")
        return sorted(found)

    def download(self, pkgs: list[tuple[str, str]], dest: Path) -> list[Path]:
        _run(["apt-get", "download", "-qq", *(f"{n}={v}" for n, v in pkgs)], env=self.env, cwd=dest)
        return sorted(dest.glob("*.deb"))


def _sources_digest() -> str:
    """Hash of everything in the repo that ends up in (or shapes) the bundle."""
    h = hashlib.sha256()
    files = [_SRC / "build.py", _SRC / "launcher.c", _PKG_ROOT / "__init__.py"]
    for pkg in _AGENT_PACKAGES:
        files.extend(sorted((_PKG_ROOT / pkg).rglob("*.py")))
    for f in files:
        h.update(str(f.relative_to(_PKG_ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _needed(elf: Path) -> list[str]:
    out = _run(["readelf", "-d", "-W", str(elf)])
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def _find_lib(root: Path, name: str) -> Path:
    for d in _LIB_DIRS:
        cand = root / d / name
        if cand.exists():
            return cand
    raise BundleBuildError(f"library {name} is in no unpacked package (lib dirs {_LIB_DIRS})")


def _copy_libs(root: Path, elves: Iterable[Path], libdir: Path) -> None:
    """Copy the DT_NEEDED closure of `elves` (and the loader) from the unpacked root."""
    todo = [*elves, _find_lib(root, _LOADER), *(_find_lib(root, n) for n in _DLOPENED)]
    seen: set[str] = set()
    while todo:
        elf = todo.pop()
        for name in _needed(elf):
            if name in seen:
                continue
            seen.add(name)
            lib = _find_lib(root, name)
            shutil.copy2(lib, libdir / name)  # follows the soname symlink: one real file
            todo.append(lib)
    for name in (_LOADER, *_DLOPENED):
        shutil.copy2(_find_lib(root, name), libdir / name)


def _compile_launcher(dest: Path) -> None:
    src = _SRC / "launcher.c"
    for cc in (["musl-gcc", "-static"], ["gcc", "-static"]):
        if shutil.which(cc[0]):
            _run([*cc, "-Os", "-s", "-Wall", "-Werror", "-o", str(dest), str(src)])
            return
    raise BundleBuildError("no C compiler (musl-gcc or gcc) for the launcher: run hack/setup.sh")


def _version_tuple(version: str) -> tuple[int, ...]:
    """'1:4.2.1-1' -> (4, 2, 1): epoch and Debian revision dropped."""
    upstream = re.sub(r"^\d+:", "", version).partition("-")[0]
    return tuple(int(x) for x in re.findall(r"\d+", upstream)[:3])


def _compile(out: Path, stdlib: Path) -> None:
    """Precompile everything with the bundle's own Python (run through its launcher).

    Unchecked-hash .pyc files stay valid in any copy (the emptyDir copy has new mtimes and may
    be mounted read-only), so a fresh start compiles nothing. The stdlib ships sourceless
    (legacy `module.pyc` beside where `module.py` was): 9 MB and ~500 files fewer to copy into
    every pod; only stdlib frames of a traceback lose their source line. The agent keeps its
    sources for readable tracebacks.
    """
    python = [str(out / "bin/python3"), "-m", "compileall", "-q", "-j0"]
    python += ["--invalidation-mode", "unchecked-hash"]
    _run([*python, "-b", "-x", re.escape(f"{stdlib}/podckpt/"), str(stdlib)])
    for src in [*stdlib.rglob("*.py"), *stdlib.rglob("__pycache__")]:
        if "podckpt" not in src.relative_to(stdlib).parts:
            # __pycache__ here only holds what compileall's own imports cached from source.
            shutil.rmtree(src) if src.is_dir() else src.unlink()
    _run([*python, str(stdlib / "podckpt")])


def _assemble(unpacked: Path, out: Path, pkgs: list[tuple[str, str]]) -> None:
    py = f"python{BUNDLE_PYTHON}"
    for sub in ("bin", "criu", "lib", "libexec"):
        (out / sub).mkdir(parents=True)
    shutil.copy2(unpacked / "usr/bin" / py, out / "libexec/python3")
    shutil.copy2(unpacked / "usr/sbin/criu", out / "libexec/criu")

    stdlib_src, stdlib = unpacked / "usr/lib" / py, out / "lib" / py
    shutil.copytree(
        stdlib_src,
        stdlib,
        symlinks=True,
        ignore=lambda _d, names: [n for n in names if n in _STDLIB_DROP or n == "__pycache__"],
    )
    dynload = stdlib / "lib-dynload"
    for ext in list(dynload.iterdir()):
        if _DYNLOAD_DROP.match(ext.name):
            ext.unlink()
    for link in [p for p in stdlib.rglob("*") if p.is_symlink()]:
        link.unlink()  # Debian's sitecustomize.py -> /etc/...: dangling in a container

    _copy_libs(
        unpacked, [out / "libexec/python3", out / "libexec/criu", *dynload.iterdir()], out / "lib"
    )

    # The agent lives in the stdlib directory: with -I -S it is on sys.path and nothing else is.
    (stdlib / "podckpt").mkdir()
    shutil.copy2(_PKG_ROOT / "__init__.py", stdlib / "podckpt/__init__.py")
    for pkg in _AGENT_PACKAGES:
        if (_PKG_ROOT / pkg).is_dir():
            shutil.copytree(
                _PKG_ROOT / pkg,
                stdlib / "podckpt" / pkg,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )

    _compile_launcher(out / "bin/podckpt-agent")
    shutil.copy2(out / "bin/podckpt-agent", out / "bin/python3")
    shutil.copy2(out / "bin/podckpt-agent", out / "criu/criu")
    shutil.copy2(out / "bin/podckpt-agent", out / "bin/podckpt-pidfloor")
    shutil.copy2(out / "lib" / _LOADER, out / "criu" / _LOADER)  # see CRIU_LOADER in launcher.c

    _compile(out, stdlib)

    versions = dict(pkgs)
    criu_version = _run([str(out / "criu/criu"), "--version"]).strip()
    manifest = {
        "mount_path": MOUNT_PATH,
        "python": versions.get(f"{py}-minimal"),
        "criu": versions.get("criu"),
        "criu_version_output": criu_version,
        "suite": SUITE,
        "packages": versions,
        "sources_sha256": _sources_digest(),
        "recipe": _RECIPE,
    }
    (out / "bundle.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for d, _subdirs, files in os.walk(out):
        os.chmod(d, 0o755)  # noqa: S103 - world-readable on purpose: any container user runs it
        for f in files:
            p = Path(d) / f
            if not p.is_symlink():
                p.chmod(0o755 if os.access(p, os.X_OK) else 0o644)


def _prune(cache: Path, keep: Path, count: int = 3) -> None:
    """Keep the `count` newest bundles: every agent edit makes a new ~55 MB one."""
    bundles = sorted(
        (p for p in cache.glob("py*-criu*") if p.is_dir() and p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in bundles[count - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def build_bundle(out: Path | None = None, *, force: bool = False) -> Path:
    """Build (or reuse from the cache) the bundle; return its directory.

    With `out`, the finished bundle is also copied there (an existing `out` is replaced).
    """
    cache = bundle_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".lock"):
        apt = _Apt(cache / "apt")
        try:
            apt.update()
            pkgs = apt.resolve(_ROOT_PACKAGES)
        except BundleBuildError:
            # Mirror unreachable: a bundle already built from these very sources will do.
            cached = _cached_for_sources(cache)
            if cached is None or force:
                raise
            return _deliver(cached, out)
        criu = dict(pkgs).get("criu", "0")
        if _version_tuple(criu) < BUNDLE_CRIU:
            raise BundleBuildError(f"{SUITE} has criu {criu}; the bundle needs >= 4.2")
        key = hashlib.sha256(
            json.dumps([_RECIPE, SUITE, pkgs, _sources_digest()]).encode()
        ).hexdigest()[:16]
        final = cache / f"py{BUNDLE_PYTHON}-criu{criu}-{key}"
        if force and final.exists():
            shutil.rmtree(final)
        if not final.exists():
            with tempfile.TemporaryDirectory(prefix=".build-", dir=cache) as tmp:
                debs, unpacked, staged = Path(tmp, "debs"), Path(tmp, "root"), Path(tmp, "bundle")
                debs.mkdir()
                for deb in apt.download(pkgs, debs):
                    _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
                _assemble(unpacked, staged, pkgs)
                staged.rename(final)
            (cache / "latest").unlink(missing_ok=True)
            (cache / "latest").symlink_to(final.name)
            _prune(cache, keep=final)
    return _deliver(final, out)


def _deliver(bundle: Path, out: Path | None) -> Path:
    if out is None:
        return bundle
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(bundle, out, symlinks=True)
    return out


def _cached_for_sources(cache: Path) -> Path | None:
    """The newest cached bundle built by this recipe from the current sources, if any."""
    digest = _sources_digest()
    found = []
    for manifest in cache.glob("py*-criu*/bundle.json"):
        meta = json.loads(manifest.read_text())
        if meta.get("sources_sha256") == digest and meta.get("recipe") == _RECIPE:
            found.append(manifest.parent)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def tree_size(path: Path) -> int:
    """Apparent size in bytes of the regular files under `path` (the 'uncompressed' size)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
