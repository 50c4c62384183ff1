"""Which restores are lazy (lazy.choose) and what the agent checks first (lazy.unavailable)."""

from __future__ import annotations

import types
from pathlib import Path

from podckpt.agent import lazy
from podckpt.agent.generations import Generation
from podckpt.agent.manifest import FileEntry, Manifest


def _manifest(size: int) -> Manifest:
    files = {"images/pages-1.img": FileEntry(size, "sha256", "0" * 64)}
    return Manifest("g", 2, False, files, {})


def _ctx(privileged: bool) -> object:
    return types.SimpleNamespace(privileged=privileged)


def test_full_unless_asked_or_big(tmp_path: Path) -> None:
    gen = Generation("20261201T000000Z-000001", tmp_path)
    small, big = _manifest(1 << 20), _manifest(lazy.AUTO_LAZY_BYTES)
    ctx = _ctx(privileged=False)
    assert lazy.choose(ctx, gen, big, "full") == (False, None)  # type: ignore[arg-type]
    assert lazy.choose(ctx, gen, small, None) == (False, None)  # type: ignore[arg-type]
    chosen, why = lazy.choose(ctx, gen, small, "lazy")  # type: ignore[arg-type]
    assert not chosen
    assert "privileged mode" in str(why)


def test_a_generation_whose_lazy_restore_failed_restores_in_full(tmp_path: Path) -> None:
    gen = Generation("20261201T000000Z-000001", tmp_path)
    (tmp_path / lazy.LAZY_FAILED).write_text("x")
    chosen, why = lazy.choose(_ctx(privileged=True), gen, _manifest(1 << 30), "lazy")  # type: ignore[arg-type]
    assert not chosen
    assert why == "the last lazy restore of this generation failed"


def _may_use_userfaultfd() -> bool:
    """CAP_SYS_PTRACE in the effective set, or the node's sysctl: what the kernel checks."""
    status = Path("/proc/self/status").read_text()
    effective = int(next(x for x in status.splitlines() if x.startswith("CapEff:")).split()[1], 16)
    sysctl = Path("/proc/sys/vm/unprivileged_userfaultfd")
    return bool(effective >> 19 & 1) or (sysctl.exists() and sysctl.read_text().strip() == "1")


def test_userfaultfd_is_probed_for_a_privileged_agent() -> None:
    reason = lazy.unavailable(_ctx(privileged=True))  # type: ignore[arg-type]
    if _may_use_userfaultfd():
        assert reason is None
    else:
        assert reason is not None
        assert "CAP_SYS_PTRACE" in reason
