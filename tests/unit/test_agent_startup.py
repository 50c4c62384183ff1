"""The fresh-start path: CRIU's version from the bundle's manifest, the PID floor helper, the
application's environment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from podckpt.agent import criu, pids
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
