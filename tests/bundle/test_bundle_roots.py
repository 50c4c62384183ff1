"""The bundle checkpoints and restores the same application in four kinds of user image.

Roots (issue 4): (a) busybox only, (b) one static binary (no libc, no shell), (c) Debian
minbase, (d) musl only. Nothing in them but the application; the bundle is bind-mounted
read-only at /.podckpt as the emptyDir is in a pod, and each sandbox runs with a reduced
capability set, never fully privileged:
exactly the measured minimal set MINIMAL_CAPABILITIES, both for CRIU driven directly
(probe.py) and for the agent, which must declare that same set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from podckpt.agent.capabilities import REQUIRED_CAPABILITIES
from podckpt.agent.exitcodes import CHECKPOINTED
from podckpt.bundle import MOUNT_PATH
from podckpt.devtools.bundlecheck.cycle import WORK, probe_cycle
from podckpt.devtools.bundlecheck.roots import COUNTER, busybox_root
from podckpt.devtools.sandbox import Bind, Sandbox, wait_for

pytestmark = [pytest.mark.bundle, pytest.mark.criu, pytest.mark.slow]

MINIMAL_CAPABILITIES = ["CAP_CHECKPOINT_RESTORE", "CAP_SETPCAP"]
"""Measured: enough for `criu --unprivileged` dump and restore (docs/bundle.md)."""

SandboxFactory = Callable[..., Sandbox]


def _count(path: Path) -> int:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return 0


def _agent_caps() -> list[str]:
    return list(MINIMAL_CAPABILITIES)


def test_agent_declares_the_measured_set() -> None:
    """What the agent checks at start (and the webhook adds) is what was measured here."""
    assert sorted(REQUIRED_CAPABILITIES) == sorted(MINIMAL_CAPABILITIES)


def test_criu_cycle_with_minimal_capabilities(
    bundle: Path, user_root: tuple[str, Path], sandbox_factory: SandboxFactory
) -> None:
    name, root = user_root
    dump, restore = probe_cycle(
        bundle, root, capabilities=MINIMAL_CAPABILITIES, start=sandbox_factory
    )
    assert dump.ok, f"{name}: dump failed: {dump.detail} {dump.stderr[-1000:]}"
    assert restore is not None
    assert restore.ok, f"{name}: restore failed: {restore.detail} {restore.stderr[-1000:]}"
    # The restored counter went on from where it was dumped (its memory came back).
    assert restore.detail["count"] > restore.detail["count_at_dump"] > 3


def _agent_box(
    factory: SandboxFactory, root: Path, bundle: Path, work: Path, caps: list[str], **kw: object
) -> Sandbox:
    argv = [
        f"{MOUNT_PATH}/bin/podckpt-agent", "run", "--store", f"{WORK}/store/app",
        "--container", "app", "--", COUNTER, f"{WORK}/count",
    ]  # fmt: skip
    binds = [Bind(bundle, MOUNT_PATH, readonly=True), Bind(work, WORK)]
    return factory(root, argv, binds=binds, capabilities=caps, **kw)


def test_agent_checkpoints_and_restores(
    bundle: Path, user_root: tuple[str, Path], sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    name, root = user_root
    (tmp_path / "store").mkdir()
    count = tmp_path / "count"
    caps = _agent_caps()

    first = _agent_box(sandbox_factory, root, bundle, tmp_path, caps)
    assert wait_for(lambda: _count(count) > 3, 15), f"{name}: app never counted"
    assert first.stop(grace=60) == CHECKPOINTED, first.stderr_text()
    at_dump = _count(count)
    assert '"phase":"dump","outcome":"ok"' in first.stderr_text()
    time.sleep(0.3)
    assert _count(count) == at_dump, "the application outlived its container"

    second = _agent_box(sandbox_factory, root, bundle, tmp_path, caps)
    assert wait_for(lambda: _count(count) > at_dump + 3, 15), second.stderr_text()
    assert '"phase":"restore","outcome":"ok"' in second.stderr_text()
    assert second.stop(grace=60) == CHECKPOINTED, second.stderr_text()


def test_agent_names_a_missing_capability(
    bundle: Path, sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    (tmp_path / "store").mkdir()
    caps = [c for c in _agent_caps() if c != "CAP_CHECKPOINT_RESTORE"]
    box = _agent_box(sandbox_factory, busybox_root(), bundle, tmp_path, caps)
    assert box.wait(30) != 0
    assert "CAP_CHECKPOINT_RESTORE" in box.stderr_text()


def test_agent_says_seccomp_is_in_the_way(
    bundle: Path, sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    (tmp_path / "store").mkdir()
    box = _agent_box(sandbox_factory, busybox_root(), bundle, tmp_path, _agent_caps(), seccomp=True)
    assert box.wait(30) != 0
    assert "seccomp" in box.stderr_text()
    assert "Unconfined" in box.stderr_text()


@pytest.mark.parametrize(
    ("caps", "criu_args", "seccomp", "fails_at", "message"),
    [
        # criu --unprivileged refuses to start without CHECKPOINT_RESTORE (40) or SYS_ADMIN (21).
        (["CAP_SETPCAP"], ["--unprivileged"], False, "dump", "capability 40 missing"),
        # The restorer drops the restored tasks' bounding capabilities: that needs SETPCAP.
        (["CAP_CHECKPOINT_RESTORE"], ["--unprivileged"], False, "restore", "Unable to drop"),
        # Privileged mode needs SYS_ADMIN and more (it creates namespaces to probe the kernel).
        (MINIMAL_CAPABILITIES, [], False, "dump", "network namespace"),
        # Under a seccomp filter nothing helps: the kernel refuses to suspend the filter for a
        # tracer that is itself filtered, whatever its capabilities.
        (
            [*MINIMAL_CAPABILITIES, "CAP_SYS_ADMIN"],
            ["--unprivileged"],
            True,
            "dump",
            "suspending seccomp failed",
        ),
    ],
)
def test_less_than_the_minimal_set_fails(
    bundle: Path,
    sandbox_factory: SandboxFactory,
    caps: list[str],
    criu_args: list[str],
    seccomp: bool,
    fails_at: str,
    message: str,
) -> None:
    dump, restore = probe_cycle(
        bundle,
        busybox_root(),
        capabilities=caps,
        criu_args=criu_args,
        seccomp=seccomp,
        start=sandbox_factory,
    )
    failed = dump if fails_at == "dump" else restore
    assert failed is not None
    assert not failed.ok
    assert message in str(failed.detail.get("log", "")) + failed.stderr
    if fails_at == "restore":
        assert dump.ok


@pytest.mark.parametrize("net_admin", [False, True])
def test_tcp_established_needs_net_admin(
    bundle: Path, sandbox_factory: SandboxFactory, net_admin: bool
) -> None:
    """Keeping a connection open across restore (--tcp-established) locks it with nftables and
    dumps it in repair mode: that needs NET_ADMIN (over the pod's own network namespace)."""
    caps = MINIMAL_CAPABILITIES + (["CAP_NET_ADMIN"] if net_admin else [])
    dump, restore = probe_cycle(
        bundle,
        busybox_root(),
        capabilities=caps,
        criu_args=["--unprivileged", "--tcp-established", "--network-lock", "nftables"],
        app=[COUNTER, f"{WORK}/count", "tcp"],
        start=sandbox_factory,
    )
    if net_admin:
        assert dump.ok, dump.detail
        assert restore is not None
        assert restore.ok, restore.detail
    else:
        assert not dump.ok
        assert "Locking connection failed using nftables" in str(dump.detail.get("log"))


@pytest.mark.parametrize("peer", [False, True], ids=["both-ends-in-tree", "peer-outside"])
def test_tcp_close_needs_no_extra_capability(
    bundle: Path, sandbox_factory: SandboxFactory, peer: bool
) -> None:
    """--tcp-close (what the agent uses: the pod IP changes) works with the minimal set; the
    connection comes back closed and the application goes on."""
    app = [COUNTER, f"{WORK}/count", *(["tcp-peer", "{peer}"] if peer else ["tcp"])]
    dump, restore = probe_cycle(
        bundle,
        busybox_root(),
        capabilities=MINIMAL_CAPABILITIES,
        criu_args=["--unprivileged", "--tcp-close"],
        app=app,
        peer=peer,
        start=sandbox_factory,
    )
    assert dump.ok, dump.detail
    assert restore is not None
    assert restore.ok, restore.detail


def test_a_process_started_from_the_bundles_python_restores(
    bundle: Path, sandbox_factory: SandboxFactory
) -> None:
    """CRIU runs through a loader file of its own (criu/ld-linux-x86-64.so.2): were it the
    loader the bundle's Python maps, the kernel would refuse the restore (PR_SET_MM_MAP)."""
    code = (
        "import os, time\nn = 0\nwhile True:\n"
        f"    n += 1\n    open('{WORK}/count.tmp', 'w').write(str(n))\n"
        f"    os.rename('{WORK}/count.tmp', '{WORK}/count')\n    time.sleep(0.05)\n"
    )
    dump, restore = probe_cycle(
        bundle,
        busybox_root(),
        capabilities=MINIMAL_CAPABILITIES,
        app=[f"{MOUNT_PATH}/bin/python3", "-c", code],
        start=sandbox_factory,
    )
    assert dump.ok, dump.detail
    assert restore is not None
    assert restore.ok, restore.detail


def test_pidfloor_moves_the_pid_counter(bundle: Path, sandbox_factory: SandboxFactory) -> None:
    """bin/podckpt-pidfloor: the fresh-start PID floor without Python (see launcher.c)."""
    code = (
        "import subprocess\n"
        f"out = subprocess.run(['{MOUNT_PATH}/bin/podckpt-pidfloor', '300'],"
        " capture_output=True, text=True, check=True).stdout\n"
        "after = subprocess.Popen(['/bin/true'])\nafter.wait()\n"
        "print(out.strip(), after.pid)\n"
    )
    box = sandbox_factory(
        busybox_root(),
        [f"{MOUNT_PATH}/bin/python3", "-c", code],
        binds=[Bind(bundle, MOUNT_PATH, readonly=True)],
        capabilities=MINIMAL_CAPABILITIES,
    )
    assert box.wait(30) == 0, box.stderr_text()
    last, after = (int(x) for x in box.stdout_text().split())
    assert last >= 299
    assert after >= 300
