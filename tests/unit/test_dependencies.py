"""Reproducible installs: requirements.lock pins every direct dependency of pyproject.toml at
the version pyproject names (with hashes), the operator lock is the same versions for the
operator extra, and the LICENSE is the one pyproject declares."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _locked(path: Path) -> dict[str, str]:
    pins = {}
    text = path.read_text()
    for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", text, re.M):
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    assert "--hash=sha256:" in text
    return pins


def _declared(extra: str | None) -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = (
        project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    )
    out = {}
    for requirement in requirements:
        name, version = requirement.split("==")
        out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def test_lock_pins_every_declared_dependency_at_its_version() -> None:
    locked = _locked(REPO / "requirements.lock")
    for extra in (None, "operator", "dev"):
        for name, version in _declared(extra).items():
            assert locked.get(name) == version, (
                f"{name}: pyproject {version}, lock {locked.get(name)}"
            )


def test_operator_lock_is_the_operator_extra_at_the_same_versions() -> None:
    full = _locked(REPO / "requirements.lock")
    operator = _locked(REPO / "requirements-operator.lock")
    for name, version in _declared("operator").items():
        assert operator[name] == version
    for name, version in operator.items():
        assert full[name] == version, name
    for dev_only in ("pytest", "mypy", "ruff", "kubernetes"):
        assert dev_only not in operator


def test_runtime_needs_no_third_party_package_and_tests_tools_are_dev_only() -> None:
    assert _declared(None) == {}  # agent, key API and kubectl plugin: standard library only
    for name in ("kubernetes", "jsonpatch", "pyyaml"):
        assert name in _declared("dev")
        assert name not in _declared("operator")


def test_license_file_matches_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
