"""pytest fixtures for the sandbox: the cached CRIU root filesystem and a sandbox factory.

Missing prerequisites (not root, no debootstrap, no mirror) skip locally but fail under
CI=true, so that CI can never pass by silently testing nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

from podckpt.devtools.rootfs import RootfsError
from podckpt.devtools.rootfs import criu_rootfs as _build_criu_rootfs
from podckpt.devtools.sandbox import Sandbox, start_sandbox

SandboxFactory = Callable[..., Sandbox]


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the sandbox is unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def criu_rootfs() -> Path:
    """The trixie root with CRIU >= 4.2 (built on first use, then cached)."""
    if os.geteuid() != 0:
        _unavailable("the CRIU sandbox needs root")
    try:
        return _build_criu_rootfs()
    except RootfsError as exc:
        _unavailable(f"cannot build the CRIU rootfs: {exc}")


@pytest.fixture(scope="session")
def servers_rootfs() -> Path:
    """The CRIU root plus Debian's Node.js and PostgreSQL 17 (built on first use, cached)."""
    if os.geteuid() != 0:
        _unavailable("the sandbox needs root")
    from podckpt.devtools.servers_rootfs import servers_rootfs as build  # noqa: PLC0415

    try:
        return build()
    except RootfsError as exc:
        _unavailable(f"cannot build the servers rootfs: {exc}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Remember whether the test failed, so the factory's teardown can print sandbox output.
    report = yield
    item.stash.setdefault(_FAILED, False)
    if report.failed:
        item.stash[_FAILED] = True
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def sandbox_factory(request: pytest.FixtureRequest) -> Iterator[SandboxFactory]:
    """start_sandbox() with the same arguments; every sandbox is destroyed at test end.

    On failure each sandbox's stdout/stderr is printed (shown by pytest in the report) and
    its log files are kept next to the test's tmp_path-independent state directory.
    """
    if os.geteuid() != 0:
        _unavailable("sandboxes need root")
    started: list[Sandbox] = []

    def factory(rootfs: Path, argv: Sequence[str], **kwargs: Any) -> Sandbox:
        box = start_sandbox(rootfs, argv, **kwargs)
        started.append(box)
        return box

    yield factory
    failed = request.node.stash.get(_FAILED, False)
    errors: list[BaseException] = []
    for box in started:
        try:
            box.destroy()
        except Exception as exc:  # noqa: BLE001 - destroy the others first
            errors.append(exc)
        if failed:
            print(f"\n--- sandbox pid {box.pid} stdout ---\n{box.stdout_text()}")
            print(f"--- sandbox pid {box.pid} stderr ---\n{box.stderr_text()}")
    if errors:
        raise errors[0]
