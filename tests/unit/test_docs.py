"""The docs name only what exists: every key, variable, module, command and path that README.md
and docs/*.md mention is checked against the code, so that documentation cannot drift from it
silently. A name that is an example on purpose (a placeholder) uses angle brackets or `...`."""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from podckpt.agent import runner
from podckpt.api import Key, NamespaceKey, contract
from podckpt.operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
PACKAGES = ("api", "agent", "bundle", "operator", "devtools")


def _doc_ids() -> list[str]:
    return [d.relative_to(ROOT).as_posix() for d in DOCS]


@cache
def _text(doc: Path) -> str:
    return doc.read_text()


@cache
def _source_text() -> str:
    return "\n".join(
        p.read_text(errors="replace")
        for pattern in ("src/**/*.py", "src/**/*.c", "hack/*", "config/**/*.yaml", "Makefile")
        for p in ROOT.glob(pattern)
        if p.is_file()
    )


def _settings_variables() -> set[str]:
    prefix = OperatorSettings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in OperatorSettings.model_fields}


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    return {
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    }


@cache
def _cluster_subcommands() -> set[str]:
    out = subprocess.run(
        [sys.executable, "-m", "podckpt.devtools.cluster", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"\{([a-z,-]+)\}", out)
    assert found, out
    return set(found.group(1).split(","))


@cache
def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.M))


def _demo_subcommands() -> set[str]:
    return set(re.findall(r"^\s+([a-z-]+)\)", (ROOT / "hack/demo.sh").read_text(), re.M))


@pytest.mark.parametrize("doc", DOCS, ids=_doc_ids())
def test_every_key_named_exists(doc: Path) -> None:
    known = {k.value for k in Key} | {k.value for k in NamespaceKey}
    named = set(re.findall(r"memverge\.ai/([a-z][a-z0-9-]*[a-z0-9])", _text(doc)))
    assert named - known == set(), f"{doc.name} names keys that podckpt.api does not define"


@pytest.mark.parametrize("doc", DOCS, ids=_doc_ids())
def test_every_variable_named_exists(doc: Path) -> None:
    named = set(re.findall(r"\b((?:PODCKPT|MMC)_[A-Z0-9_]*[A-Z0-9])\b", _text(doc)))
    known = _settings_variables() | set(contract.Env)
    missing = {
        v for v in named - known if f'"{v}"' not in _source_text() and v not in _source_text()
    }
    assert missing == set(), f"{doc.name} names variables that no code reads"


@pytest.mark.parametrize("doc", DOCS, ids=_doc_ids())
def test_every_python_name_exists(doc: Path) -> None:
    missing = []
    for name in set(re.findall(r"`(podckpt(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", _text(doc))):
        parts = name.split(".")
        if parts[1] not in PACKAGES:
            continue  # podckpt.io/..., podckpt.local/...: domains, not modules
        if not _resolves(parts):
            missing.append(name)
    assert missing == [], f"{doc.name} names modules or attributes that do not exist"


def _resolves(parts: list[str]) -> bool:
    for cut in range(len(parts), 1, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=_doc_ids())
def test_every_command_named_exists(doc: Path) -> None:
    text = _text(doc)
    missing = []
    for sub in re.findall(r"hack/cluster\.sh ([a-z][a-z-]*)", text):
        if sub not in _cluster_subcommands():
            missing.append(f"hack/cluster.sh {sub}")
    for sub in re.findall(r"hack/demo\.sh ([a-z][a-z-]*)", text):
        if sub not in _demo_subcommands():
            missing.append(f"hack/demo.sh {sub}")
    for target in re.findall(r"`make ([a-z][a-z0-9-]*)", text):
        if target not in _make_targets():
            missing.append(f"make {target}")
    # `install` is the bundle launcher's own (launcher.c), run by the init container.
    launcher = set(re.findall(r'strcmp\(argv\[1\], "([a-z-]+)"\)', _source_text()))
    agent = _subcommands(runner.build_parser()) | launcher
    for sub in re.findall(r"podckpt-agent ([a-z][a-z-]*)", text):
        if sub not in agent:
            missing.append(f"podckpt-agent {sub}")
    for module in re.findall(r"python3? -m (podckpt[a-z_.]*)", text):
        if importlib.util.find_spec(module) is None:
            missing.append(f"python -m {module}")
    assert missing == [], f"{doc.name} names commands that do not exist"


@pytest.mark.parametrize("doc", DOCS, ids=_doc_ids())
def test_every_path_named_exists(doc: Path) -> None:
    text = _text(doc)
    named = set(
        re.findall(r"`((?:src|docs|bench|tests|config|hack|charts|docker)/[^`\s*<>]+)`", text)
    )
    named |= {
        (doc.parent / link).resolve().relative_to(ROOT).as_posix()
        for link in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", text)
        if (doc.parent / link).resolve().is_relative_to(ROOT)
    }
    missing = sorted(p for p in named if not (ROOT / p.rstrip("/")).exists())
    assert missing == [], f"{doc.name} names files that do not exist"
