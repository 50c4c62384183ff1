"""`podckpt-agent install --to DIR --key FILE` (the bundle init container, launcher.c): the
store key lands where the agent looks for it (contract.STORE_KEY_FILE), readable by root only.
Compiles the launcher alone: no bundle build, no root."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from podckpt.api import contract

LAUNCHER = Path(__file__).resolve().parents[2] / "src/podckpt/bundle/launcher.c"


@pytest.fixture(scope="module")
def launcher_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("musl-gcc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (hack/setup.sh installs musl-tools)")
    bundle = tmp_path_factory.mktemp("bundle")
    (bundle / "bin").mkdir()
    (bundle / "lib").mkdir()
    (bundle / "lib" / "marker").write_text("part of the bundle")
    subprocess.run(
        [compiler, "-Os", "-Wall", "-Werror", "-o", str(bundle / "bin/podckpt-agent"), LAUNCHER],
        check=True,
    )
    return bundle


def test_install_copies_the_store_key_private_to_root(
    launcher_bundle: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_bytes(b"0123456789abcdef" * 4)
    (secret / "key").chmod(0o440)  # what the kubelet makes of 0400 with an fsGroup
    target = tmp_path / "emptydir"
    agent = str(launcher_bundle / "bin/podckpt-agent")
    for _ in range(2):  # the init container runs again when the pod sandbox is recreated
        done = subprocess.run(
            [agent, "install", "--to", str(target), "--key", str(secret / "key")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    key = target / contract.STORE_KEY_IN_BUNDLE
    assert key.read_bytes() == b"0123456789abcdef" * 4
    assert stat.S_IMODE(key.stat().st_mode) == 0o400
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert (key.stat().st_uid, key.parent.stat().st_uid) == (os.geteuid(), os.geteuid())
    assert (target / "lib/marker").read_text() == "part of the bundle"
    assert (target / ".installed").exists()
    assert sorted(p.name for p in key.parent.iterdir()) == ["key"]


def test_install_with_a_missing_key_fails(launcher_bundle: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            str(launcher_bundle / "bin/podckpt-agent"),
            "install",
            "--to",
            str(tmp_path / "t"),
            "--key",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "cannot open the store key" in done.stderr
    assert not (tmp_path / "t" / ".installed").exists()
