"""Lazy restore (`restore-mode: lazy`, lazy.py) with real CRIU lazy-pages and userfaultfd.

The application (pattern.py) fills its memory with a pattern and verifies every page now and
then: a page that came back as zeros, or from the wrong place, ends it with `pattern BAD`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
from pathlib import Path

import pytest
from agent_harness import AgentHarness, counts, phases, stop_and_wait, wait_count

from podckpt.agent import images, lazy
from podckpt.agent.exitcodes import CHECKPOINTED
from podckpt.devtools.sandbox import Bind, Sandbox, wait_for

pytestmark = pytest.mark.criu

LAZY = {"memverge.ai/restore-mode": "lazy"}
#: containerd's default set, plus what the agent needs, plus CRIU's privileged mode.
CONTAINERD = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE", "CAP_CHECKPOINT_RESTORE",
]  # fmt: skip
PRIVILEGED_CRIU = ["CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_TIME"]


def _checkpointed(
    agent: AgentHarness, mib: int, caps: list[str] | None = None, check: int = 5
) -> int:
    """Run pattern.py MIB, let it verify its memory once, SIGTERM: a committed generation
    with lazy pages. Returns the last count before the dump."""
    argv = ["python3", "/apps/pattern.py", str(mib), str(check)]
    for _ in range(3):
        box = agent.start(argv, capabilities=caps)
        assert wait_for(lambda b=box: "ready" in b.stdout_text(), 120), box.stderr_text()[-2000:]
        wait_count(box, check + 1, timeout=60)
        assert stop_and_wait(box, 120) == CHECKPOINTED
        if images.has_lazy_pages(_images(agent)):
            return counts(box)[-1]
        # CRIU marked no page lazy (a page-aligned stack pointer, images.py): a lazy restore
        # of this one would be full. Another dump from scratch.
        shutil.rmtree(agent.app_store)
    pytest.fail("three dumps without a lazy page")


def _images(agent: AgentHarness) -> Path:
    return agent.app_store / "generations" / str(agent.latest()) / "images"


def _pattern_checked_after(box: Sandbox, count: int) -> None:
    """The restored application went on from `count` and verified all its memory since."""
    assert wait_for(lambda: counts(box) and counts(box)[-1] >= count + 12, 60), box.stdout_text()[
        -1000:
    ]
    assert counts(box)[0] > count - 2, "restored, not started fresh"
    out = box.stdout_text()
    assert "pattern BAD" not in out, out[-500:]
    assert "pattern ok" in out


def test_lazy_restore_runs_first_and_reports_the_last_page(agent: AgentHarness) -> None:
    last = _checkpointed(agent, 512)
    generation = agent.latest()
    assert generation is not None
    box = agent.start(["python3", "/apps/pattern.py", "512", "5"], annotations=LAZY)
    assert wait_for(lambda: phases(box, "lazy-pages"), 120), box.stderr_text()[-3000:]
    restored = phases(box, "restore", "ok")[0]
    assert restored["mode"] == "lazy"
    done = phases(box, "lazy-pages", "ok")
    assert done, box.stderr_text()[-3000:]
    assert done[0]["generation"] == generation
    # CRIU itself copied only what cannot be lazy; the daemon brought the rest.
    assert restored["criu"].get("pages_restored", 0) < (512 << 20) // 4096 // 2
    _pattern_checked_after(box, last)
    # Retired only once every page image verified (it was read until then).
    assert wait_for(lambda: phases(box, "lazy-pages", "verified"), 60), box.stderr_text()[-2000:]
    assert not (agent.app_store / "generations" / generation).exists()
    assert stop_and_wait(box, 120) == CHECKPOINTED


def _without_lazy_flags(image: bytes) -> bytes:
    """The pagemap image with PE_LAZY cleared on every entry, as CRIU writes it when a
    stack pointer was page-aligned at the dump. Entry: u32 size, then pagemap_entry."""
    out = bytearray(image)
    pos = 12 + struct.unpack_from("<I", out, 8)[0]  # past the magics and the head
    while pos < len(out):
        (size,) = struct.unpack_from("<I", out, pos)
        at, end = pos + 4, pos + 4 + size
        while at < end:  # every field here is a varint
            tag = out[at]
            at += 1
            if tag == 4 << 3:  # flags: one byte (PE_* < 128), rewritten in place
                out[at] &= ~images.PE_LAZY
            while out[at] & 0x80:
                at += 1
            at += 1
        pos = end
    return bytes(out)


def test_a_checkpoint_criu_marked_without_lazy_pages_restores_in_full(
    agent: AgentHarness,
) -> None:
    """Lazy asked for, but no page of the checkpoint is lazy: CRIU would copy them all itself.
    The restore is full and says why, instead of starting a daemon that serves nothing."""
    last = _checkpointed(agent, 256)
    generation = agent.latest()
    gen_dir = agent.app_store / "generations" / str(generation)
    manifest = json.loads((gen_dir / "manifest.json").read_text())
    if "hmac" in manifest:
        pytest.skip("the harness signs manifests: an edited one would be refused")
    for pagemap in _images(agent).glob("pagemap-*.img"):
        edited = _without_lazy_flags(pagemap.read_bytes())
        pagemap.write_bytes(edited)
        manifest["checksums"][f"images/{pagemap.name}"]["sha256"] = hashlib.sha256(
            edited
        ).hexdigest()
    (gen_dir / "manifest.json").write_text(json.dumps(manifest))
    assert images.has_lazy_pages(_images(agent)) is False

    box = agent.start(["python3", "/apps/pattern.py", "256", "5"], annotations=LAZY)
    assert wait_for(lambda: phases(box, "restore", "ok"), 60), box.stderr_text()[-3000:]
    assert phases(box, "restore", "full")[0]["why"] == lazy.NO_LAZY_PAGES
    restored = phases(box, "restore", "ok")[0]
    assert (restored["generation"], restored["mode"]) == (generation, "full")
    assert restored["criu"]["pages_restored"] >= (256 << 20) // 4096  # CRIU copied them all
    assert not phases(box, "lazy-pages")
    _pattern_checked_after(box, last)
    assert stop_and_wait(box, 120) == CHECKPOINTED


def test_a_daemon_that_listens_late_makes_the_restore_run_again(
    agent: AgentHarness, tmp_path: Path
) -> None:
    """The restore starts beside the daemon (criurestore.py); when it reaches the daemon's
    socket before the daemon listens, CRIU fails before creating anything and the restore runs
    again once the daemon listens: still lazy, the memory intact."""
    last = _checkpointed(agent, 256)
    wrapper = tmp_path / "slow-criu" / "criu"
    wrapper.parent.mkdir()
    wrapper.write_text('#!/bin/sh\n[ "$1" = lazy-pages ] && sleep 0.5\nexec /usr/sbin/criu "$@"\n')
    wrapper.chmod(0o755)
    box = agent.start(
        ["python3", "/apps/pattern.py", "256", "5"],
        annotations=LAZY,
        binds=[Bind(wrapper.parent, "/slow-criu", True)],
        env={"PODCKPT_CRIU": "/slow-criu/criu"},
    )
    assert wait_for(lambda: phases(box, "restore", "ok"), 60), box.stderr_text()[-3000:]
    restored = phases(box, "restore", "ok")[0]
    assert restored["mode"] == "lazy", restored
    assert restored["lazy_restore_retried"] is True, restored
    assert restored["lazy_daemon_wait_s"] > 0.1, restored
    assert restored["criu"]["pages_restored"] < (256 << 20) // 4096 // 2  # the daemon's job
    assert wait_for(lambda: phases(box, "lazy-pages", "verified"), 60), box.stderr_text()[-2000:]
    _pattern_checked_after(box, last)
    assert stop_and_wait(box, 120) == CHECKPOINTED


def test_a_page_source_that_fails_midway_ends_in_a_full_restore(agent: AgentHarness) -> None:
    """SIGKILL to `criu lazy-pages` while pages are still missing: the application is stopped
    (never left to read zeros or to hang), the restore counts as failed, and the same
    generation is restored again in full."""
    last = _checkpointed(agent, 1024)
    generation = agent.latest()
    box = agent.start(["python3", "/apps/pattern.py", "1024", "5"], annotations=LAZY)
    daemon = _wait_for_daemon(box)
    assert wait_for(lambda: phases(box, "restore", "ok"), 120, interval=0.002)
    os.kill(daemon, signal.SIGKILL)
    assert wait_for(lambda: len(phases(box, "restore", "ok")) >= 2, 120), box.stderr_text()[-3000:]
    failed = phases(box, "lazy-pages", "failed")
    assert failed, "the transfer ended before the kill; nothing was tested"
    assert "criu lazy-pages failed" in failed[0]["error"]
    assert phases(box, "restore", "failed")[0]["mode"] == "lazy"
    again = phases(box, "restore", "ok")[1]
    assert (again["generation"], again["mode"]) == (generation, "full")
    _pattern_checked_after(box, last)
    assert stop_and_wait(box, 120) == CHECKPOINTED


def test_a_corrupted_page_image_stops_a_lazy_restore(agent: AgentHarness) -> None:
    """The page images are verified while the daemon serves them: a corrupted one stops the
    application and the generation is never tried again."""
    _checkpointed(agent, 256, check=100)
    generation = agent.latest()
    assert generation is not None
    images = agent.app_store / "generations" / generation / "images"
    pages = max(images.glob("pages-*.img"), key=lambda p: p.stat().st_size)
    with pages.open("r+b") as f:
        f.seek(pages.stat().st_size - 4096 * 3)
        f.write(b"\xa5" * 64)
    box = agent.start(["python3", "/apps/pattern.py", "256", "100"], annotations=LAZY)
    assert wait_for(lambda: phases(box, "lazy-pages", "failed"), 120), box.stderr_text()[-3000:]
    assert "corrupted" in phases(box, "lazy-pages", "failed")[0]["error"]
    assert phases(box, "restore", "failed")[0]["mode"] == "lazy"
    # Nothing older: a fresh start follows (which retires the bad generation for good).
    assert wait_for(lambda: phases(box, "fresh-start", "ok"), 60), box.stderr_text()[-3000:]
    assert wait_for(lambda: phases(box, "retire", "ok"), 60)
    assert phases(box, "retire", "ok")[0]["generations"] == [generation]
    wait_count(box, 1)
    assert stop_and_wait(box, 120) == CHECKPOINTED


@pytest.mark.parametrize(
    ("caps", "why"),
    [
        (CONTAINERD + PRIVILEGED_CRIU, "CAP_SYS_PTRACE"),
        ([*CONTAINERD, "CAP_SYS_PTRACE"], "privileged mode"),
    ],
    ids=["no-ptrace", "unprivileged-criu"],
)
def test_without_the_privileges_lazy_becomes_full(
    agent: AgentHarness, caps: list[str], why: str
) -> None:
    last = _checkpointed(agent, 64, caps)
    box = agent.start(
        ["python3", "/apps/pattern.py", "64", "5"], annotations=LAZY, capabilities=caps
    )
    assert wait_for(lambda: phases(box, "restore", "ok"), 60), box.stderr_text()[-3000:]
    assert phases(box, "restore", "ok")[0]["mode"] == "full"
    assert why in phases(box, "restore", "full")[0]["why"]
    _pattern_checked_after(box, last)
    box.destroy()


def _wait_for_daemon(box: Sandbox) -> int:
    """The host PID of the sandbox's `criu lazy-pages`."""
    own_ns = os.readlink(f"/proc/{box.pid}/ns/pid")
    found: list[int] = []

    def look() -> bool:
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
                same = os.readlink(f"/proc/{name}/ns/pid") == own_ns
            except OSError:
                continue
            if same and b"lazy-pages" in cmdline[:2]:
                found.append(int(name))
                return True
        return False

    assert wait_for(look, 60, interval=0.005), box.stderr_text()[-3000:]
    return found[0]


def test_a_full_restore_verifies_pages_at_the_pace_criu_fills_memory(agent: AgentHarness) -> None:
    """The page verifier followed the memory CRIU filled (readpace.py) all the way: the
    measure kept growing until CRIU exited and saw most of the image, without CAP_SYS_PTRACE,
    and the memory came back whole."""
    last = _checkpointed(agent, 256, CONTAINERD)
    box = agent.start(
        ["python3", "/apps/pattern.py", "256", "5"],
        annotations={"memverge.ai/restore-mode": "full"},
        capabilities=CONTAINERD,
    )
    assert wait_for(lambda: phases(box, "restore", "ok"), 60), box.stderr_text()[-3000:]
    pace = phases(box, "restore", "ok")[0]["verify_pace"]
    assert pace["ended"] == "released", pace
    assert pace["filled_mib"] > 200, pace
    _pattern_checked_after(box, last)
    box.destroy()
