"""The test tree imports modules by basename (rootdir-relative, no packages): two test files of
the same name in different folders break collection of the whole tree, which a run of one
folder would not notice."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("*.py") if p.name != "conftest.py")
    assert [n for n, c in names.items() if c > 1] == []
