"""The fresh-start path: CRIU's version from the bundle's manifest, the PID floor helper, the
application's environment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from podckpt.agent import cli, criu, generations, pids
from podckpt.agent.appstart import application_env
from podckpt.agent.errors import CriuTooOldError
from podckpt.api.contract import AGENT_ENV as AGENT_ONLY_ENV


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def _bundle(tmp_path: Path, version_output: str | None) -> tuple[Path, Path]:
    bundle = tmp_path / "bundle"
    # A CRIU that fails when run: the version must come from bundle.json.
    exe = _script(bundle / "criu" / "criu", "echo ran >&2; exit 3")
    if version_output is not None:
        (bundle / "bundle.json").write_text(json.dumps({"criu_version_output": version_output}))
    return bundle, exe


def test_bundled_criu_version_comes_from_the_manifest(tmp_path: Path) -> None:
    bundle, exe = _bundle(tmp_path, "Version: 4.2.1")
    found = criu.find({"PODCKPT_BUNDLE": str(bundle), "PATH": ""})
    assert (found.path, found.version) == (str(exe), (4, 2, 1))


def test_bundled_criu_too_old_is_refused(tmp_path: Path) -> None:
    bundle, _ = _bundle(tmp_path, "Version: 4.1")
    with pytest.raises(CriuTooOldError):
        criu.find({"PODCKPT_BUNDLE": str(bundle), "PATH": ""})


@pytest.mark.parametrize("manifest", [None, "garbage"])
def test_without_a_usable_manifest_criu_is_asked(tmp_path: Path, manifest: str | None) -> None:
    bundle, _ = _bundle(tmp_path, manifest)
    with pytest.raises(criu.CriuMissingError, match="exit 3"):
        criu.find({"PODCKPT_BUNDLE": str(bundle), "PATH": ""})


def test_explicit_criu_is_always_asked(tmp_path: Path) -> None:
    bundle, _ = _bundle(tmp_path, "Version: 4.2.1")
    other = _script(tmp_path / "other" / "criu", 'echo "Version: 4.3"')
    found = criu.find({"PODCKPT_BUNDLE": str(bundle), "PODCKPT_CRIU": str(other), "PATH": ""})
    assert (found.path, found.version) == (str(other), (4, 3, 0))


def test_application_env_drops_the_agents_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in AGENT_ONLY_ENV:
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("APP_SETTING", "1")
    env = application_env()
    assert not set(AGENT_ONLY_ENV) & set(env)
    assert not [name for name in env if name.startswith("PODCKPT_")], "none of ours reaches the app"
    assert env["APP_SETTING"] == "1"
    assert "PODCKPT_BUNDLE" in os.environ  # the agent's own stays


def _host_is_above_floor() -> bool:
    return pids.last_pid() >= pids.PID_FLOOR


@pytest.mark.skipif(not _host_is_above_floor(), reason="needs a PID namespace past 300")
def test_helper_floor_result(tmp_path: Path) -> None:
    ok = _script(tmp_path / "ok", "echo 400")
    assert pids.HelperFloor(str(ok)).result().method == "helper"
    # A failing helper: the agent finishes the job itself (here: nothing left to do).
    failing = _script(tmp_path / "fail", "exit 1")
    assert pids.HelperFloor(str(failing)).result().method == "already"
    missing = tmp_path / "missing"
    assert pids.HelperFloor(str(missing)).result().method == "already"


def test_helper_is_found_in_the_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PODCKPT_BUNDLE", raising=False)
    assert pids.helper_path() is None
    helper = _script(tmp_path / "bin" / "podckpt-pidfloor", "exit 0")
    monkeypatch.setenv("PODCKPT_BUNDLE", str(tmp_path))
    assert pids.helper_path() == str(helper)


def _store_with(tmp_path: Path, manifest: object, name: str = "20261202T000000Z-000001") -> Path:
    store = tmp_path / "store"
    gen = store / generations.GENERATIONS / name
    gen.mkdir(parents=True)
    (store / generations.LATEST).write_text(name + "\n")
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (gen / generations.MANIFEST).write_text(text)
    return store


def test_a_restore_starts_burning_above_the_tree_latest_records(tmp_path: Path) -> None:
    """The CLI reads LATEST's manifest with the store's own names (generations.py) and aims
    the early burn just above the dumped tree's highest PID."""
    store = _store_with(tmp_path, {"root_pid": 301, "highest_pid": 342})
    assert cli.restore_floor(str(store)) == 343


@pytest.mark.parametrize(
    "manifest",
    [
        {"root_pid": 301},  # written before highest_pid existed
        {"root_pid": 301, "highest_pid": pids.PID_FLOOR + pids.MAX_CLEAR},  # too far to burn
        {"root_pid": 301, "highest_pid": 12},  # below the application's range: not a tree's
        {"root_pid": 301, "highest_pid": "342"},
        {"root_pid": 301, "highest_pid": True},
        "{not json",
        ["a list"],
    ],
)
def test_without_a_usable_hint_a_restore_starts_from_pre_restore_floor(
    tmp_path: Path, manifest: object
) -> None:
    assert cli.restore_floor(str(_store_with(tmp_path, manifest))) == pids.PRE_RESTORE_FLOOR


def test_the_hint_never_leaves_the_store(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / generations.MANIFEST).write_text(json.dumps({"highest_pid": 342}))
    store = _store_with(tmp_path, {"highest_pid": 342})
    (store / generations.LATEST).write_text("../../outside\n")
    assert cli.restore_floor(str(store)) == pids.PRE_RESTORE_FLOOR
    (store / generations.LATEST).write_text(".hidden\n")
    assert cli.restore_floor(str(store)) == pids.PRE_RESTORE_FLOOR
    assert cli.restore_floor(str(tmp_path / "no-store")) == pids.PRE_RESTORE_FLOOR
    assert cli.restore_floor(None) == pids.PRE_RESTORE_FLOOR


def test_a_fifo_or_a_link_is_never_read_for_a_hint(tmp_path: Path) -> None:
    """Opening a FIFO for reading would block the agent's start until a writer came."""
    store = _store_with(tmp_path, {"highest_pid": 342})
    latest = store / generations.LATEST
    latest.unlink()
    os.mkfifo(latest)
    assert cli.restore_floor(str(store)) == pids.PRE_RESTORE_FLOOR
    latest.unlink()
    latest.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text("20261202T000000Z-000001\n")
    assert cli.restore_floor(str(store)) == pids.PRE_RESTORE_FLOOR


def test_a_huge_manifest_is_not_read_for_a_hint(tmp_path: Path) -> None:
    padding = "x" * (cli._HINT_BYTES + 1)
    store = _store_with(tmp_path, json.dumps({"highest_pid": 342, "pad": padding}))
    assert cli.restore_floor(str(store)) == pids.PRE_RESTORE_FLOOR


def test_the_early_floor_says_whether_it_is_for_a_restore() -> None:
    """runner.py keeps a pre-restore floor for restore.py, which waits for it before CRIU."""
    fresh = pids.early_floor(1)
    restore = pids.early_floor(1, pre_restore=True)
    assert (fresh.pre_restore, restore.pre_restore) == (False, True)
    assert restore.result().last_pid >= 0
