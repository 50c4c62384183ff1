"""Fixtures for the bundle tests: the built bundle and the four kinds of user root filesystem.

Like the sandbox fixtures, a missing prerequisite skips locally but fails under CI=true, so CI
cannot pass by testing nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from podckpt.bundle import BundleBuildError, build_bundle
from podckpt.devtools.bundlecheck.roots import ROOTS
from podckpt.devtools.rootfs import RootfsError


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the bundle is unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def bundle() -> Path:
    """The agent bundle, built from the current sources (cached by their hash)."""
    try:
        return build_bundle()
    except BundleBuildError as exc:
        _unavailable(f"cannot build the bundle: {exc}")
        raise  # unreachable


@pytest.fixture(scope="session", params=list(ROOTS))
def user_root(request: pytest.FixtureRequest) -> tuple[str, Path]:
    """(name, path) of each user root: busybox, static, minbase, musl."""
    if os.geteuid() != 0:
        _unavailable("the user roots and sandboxes need root")
    name = str(request.param)
    try:
        return name, ROOTS[name]()
    except RootfsError as exc:
        _unavailable(f"cannot build the {name} root: {exc}")
        raise  # unreachable
