"""The bundle as built: self-contained, relocatable, isolated from the image, within budget."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from podckpt.agent import appuser
from podckpt.bundle import MOUNT_PATH
from podckpt.bundle.build import tree_size

pytestmark = pytest.mark.bundle

LAUNCHERS = ("bin/podckpt-agent", "bin/python3", "bin/podckpt-pidfloor", "criu/criu")
SIZE_BUDGET = 80_000_000


def _is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def _readelf(flag: str, path: Path) -> str:
    return subprocess.run(
        ["readelf", flag, "-W", str(path)], capture_output=True, text=True, check=True
    ).stdout


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, **kw)  # type: ignore[call-overload, no-any-return]


def test_layout_size_and_manifest(bundle: Path) -> None:
    for rel in (*LAUNCHERS, "lib/ld-linux-x86-64.so.2", "libexec/python3", "libexec/criu"):
        assert os.access(bundle / rel, os.X_OK), rel
    assert tree_size(bundle) <= SIZE_BUDGET
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["mount_path"] == MOUNT_PATH == "/.podckpt"
    assert manifest["criu_version_output"].startswith("Version: 4.")


def test_launchers_are_static_elf_programs(bundle: Path) -> None:
    """The entry point must run in an image without a shell or a libc."""
    for rel in LAUNCHERS:
        assert _is_elf(bundle / rel), rel
        assert "INTERP" not in _readelf("-l", bundle / rel), f"{rel} needs a dynamic loader"
        assert "NEEDED" not in _readelf("-d", bundle / rel), f"{rel} needs shared libraries"


def test_every_program_and_module_finds_its_libraries_in_the_bundle(bundle: Path) -> None:
    libs = {p.name for p in (bundle / "lib").iterdir() if p.is_file()}
    elves = [bundle / "libexec/python3", bundle / "libexec/criu"]
    elves += [p for p in (bundle / "lib").rglob("*.so*") if p.is_file() and _is_elf(p)]
    assert len(elves) > 40
    for elf in elves:
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", _readelf("-d", elf))
        missing = set(needed) - libs
        assert not missing, f"{elf.relative_to(bundle)} needs {missing}"


def test_bundled_criu_is_at_least_4_2(bundle: Path) -> None:
    out = _run([str(bundle / "criu/criu"), "--version"])
    assert out.returncode == 0, out.stderr
    major, minor = (int(x) for x in re.findall(r"Version: (\d+)\.(\d+)", out.stdout)[0])
    assert (major, minor) >= (4, 2)


def test_python_ignores_the_images_python_environment(bundle: Path) -> None:
    """Python images set PYTHONHOME/PYTHONPATH for their own Python: ours must not care."""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONHOME": "/nonexistent",
        "PYTHONPATH": "/evil",
        "PYTHONSTARTUP": "/evil.py",
        "LD_LIBRARY_PATH": "/evil/lib",
    }
    code = (
        "import json, os, sys, ssl, ctypes, hashlib, lzma, bz2, zlib, uuid, decimal\n"
        "print(json.dumps({'prefix': sys.prefix, 'path': sys.path, 'exe': sys.executable,"
        " 'bundle': os.environ.get('PODCKPT_BUNDLE'), 'version': sys.version_info[:2]}))"
    )
    out = _run([str(bundle / "bin/python3"), "-c", code], env=env)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    root = str(bundle.resolve())
    assert info["prefix"] == root
    assert info["bundle"] == root
    assert info["exe"] == f"{root}/bin/python3"
    assert all(p.startswith(root) for p in info["path"]), info["path"]
    assert tuple(info["version"]) >= (3, 11)


def test_sys_executable_starts_the_bundled_python(bundle: Path) -> None:
    code = (
        "import subprocess, sys\n"
        "print(subprocess.check_output([sys.executable, '-c', 'print(6*7)']).decode())"
    )
    out = _run([str(bundle / "bin/python3"), "-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"


def test_bundle_libraries_do_not_leak_into_children(bundle: Path) -> None:
    """--library-path is the loader's own: the application gets no LD_LIBRARY_PATH."""
    code = "import os; print(os.environ.get('LD_LIBRARY_PATH', 'unset'))"
    out = _run([str(bundle / "bin/python3"), "-c", code], env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "unset"


def test_agent_entry_point_runs_the_bundled_agent(bundle: Path) -> None:
    out = _run([str(bundle / "bin/podckpt-agent"), "--version"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("podckpt-agent ")


def test_stdlib_is_precompiled_for_any_copy(bundle: Path) -> None:
    """Unchecked-hash .pyc: a fresh copy (new mtimes, read-only mount) compiles nothing."""
    agent_pycs = list((bundle / "lib/python3.13/podckpt/agent/__pycache__").glob("*.pyc"))
    stdlib_pycs = [bundle / "lib/python3.13/os.pyc"]  # sourceless stdlib: legacy location
    assert not (bundle / "lib/python3.13/os.py").exists()
    assert agent_pycs
    assert stdlib_pycs
    for pyc in [*agent_pycs, *stdlib_pycs]:
        flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
        assert flags == 0b01, f"{pyc.name}: not an unchecked-hash pyc (flags {flags})"


def test_install_copies_a_working_bundle(bundle: Path, tmp_path: Path) -> None:
    target = tmp_path / "emptydir"
    out = _run([str(bundle / "bin/podckpt-agent"), "install", "--to", str(target)])
    assert out.returncode == 0, out.stderr
    assert (target / ".installed").is_file()

    def listing(root: Path) -> dict[str, tuple[int, int]]:
        return {
            str(p.relative_to(root)): (0 if p.is_dir() else p.lstat().st_size, p.lstat().st_mode)
            for p in root.rglob("*")
            if p.name != ".installed"
        }

    assert listing(target) == listing(bundle)
    # Relocated: the copy works from its new place.
    out = _run([str(target / "bin/python3"), "-c", "import sys, ssl; print(sys.prefix)"])
    assert out.stdout.strip() == str(target)
    assert _run([str(target / "criu/criu"), "--version"]).returncode == 0


def test_install_without_target_is_a_usage_error(bundle: Path) -> None:
    out = _run([str(bundle / "bin/podckpt-agent"), "install"])
    assert out.returncode == 2
    assert "--to" in out.stderr


def test_install_again_over_a_bundle_in_use(bundle: Path, tmp_path: Path) -> None:
    """The init container may run again into the same emptyDir (pod sandbox recreated)."""
    target = tmp_path / "emptydir"
    agent = str(bundle / "bin/podckpt-agent")
    assert _run([agent, "install", "--to", str(target)]).returncode == 0
    # A running program from the first copy: its executable must not be truncated.
    busy = subprocess.Popen([str(target / "bin/python3"), "-c", "import time; time.sleep(30)"])
    try:
        again = _run([agent, "install", "--to", str(target)])
        assert again.returncode == 0, again.stderr
    finally:
        busy.kill()
        busy.wait()
    assert (target / ".installed").is_file()
    assert not list(target.rglob("*.podckpt-install.tmp"))
    assert _run([str(target / "bin/podckpt-agent"), "--version"]).returncode == 0


def test_whoami_writes_the_user_the_agent_reads(bundle: Path) -> None:
    """The user probe: the static launcher writes uid, gid, groups and HOME (no Python, no
    loader); podckpt.agent.appuser reads exactly that, also run as another user."""
    out = Path(tempfile.mkdtemp(prefix="podckpt-probe-"))  # reachable by another user
    out.chmod(0o777)
    try:
        _whoami(bundle, out)
    finally:
        shutil.rmtree(out)


def _whoami(bundle: Path, out: Path) -> None:
    agent = str(bundle / "bin/podckpt-agent")
    env = {"HOME": '/home/"app"'}
    done = subprocess.run(
        [agent, "whoami", "--out", str(out / "app")], env=env, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
    user = appuser.from_probe(out / "app")
    assert (user.uid, user.gid, user.home) == (os.getuid(), os.getgid(), '/home/"app"')
    if os.geteuid() == 0:

        def as_user() -> None:
            os.setgroups([3000])
            os.setgid(1001)
            os.setuid(1001)

        done = subprocess.run(
            [agent, "whoami", "--out", str(out / "other")],
            env={},
            preexec_fn=as_user,
            capture_output=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert appuser.from_probe(out / "other") == appuser.AppUser(1001, 1001, (3000,), None)
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary file left"
