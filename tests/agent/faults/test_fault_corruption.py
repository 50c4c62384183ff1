"""Every kind of corruption of every file of a generation (issue 16.2).

The generation is real: files_app.py (an open log file, a file in /tmp, a shared mapping in
/dev/shm) dumped by the agent with real CRIU, signed with the store key. Each file of it
(CRIU images, saved files, files.json, dump.log, manifest.json) gets each kind of damage,
in-process against the agent's own verification (Store.verify, files.load_entries): every one
is detected. A seeded sample then goes through the real agent: the damaged generation is
refused with a Warning-worthy line, the older one is restored, nothing crash-loops.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_harness import AgentHarness, counts, phases, wait_count
from faultkit import Tally, copy_store, keyed_env, no_traceback, store_of

from podckpt.agent.errors import GenerationInvalidError
from podckpt.agent.exitcodes import CHECKPOINTED
from podckpt.devtools.sandbox import wait_for

pytestmark = pytest.mark.criu

APP = ["python3", "/apps/files_app.py"]
AGENT_CASES = 8


def _flip(offset: Callable[[int], int]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = bytearray(path.read_bytes())
        if not data:
            data = bytearray(b"\0")
        data[offset(len(data))] ^= 0x5A
        path.write_bytes(bytes(data))

    return damage


def _truncate(keep: Callable[[int], int]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        size = path.stat().st_size
        with path.open("r+b") as f:
            f.truncate(keep(size) if size else 0)
        if size == 0:
            path.write_bytes(b"\0")  # an empty file "truncated": make it grow instead

    return damage


def _append(path: Path) -> None:
    with path.open("ab") as f:
        f.write(b"\0")


def _delete(path: Path) -> None:
    path.unlink()


def _symlink(path: Path) -> None:
    outside = path.parent.parent.parent / f"outside-{path.name}"
    shutil.copyfile(path, outside)
    path.unlink()
    path.symlink_to(outside)


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _zeroes(path: Path) -> None:
    path.write_bytes(b"\0" * path.stat().st_size)


KINDS: dict[str, Callable[[Path], None]] = {
    "flip-first-byte": _flip(lambda n: 0),
    "flip-middle-byte": _flip(lambda n: n // 2),
    "flip-last-byte": _flip(lambda n: n - 1),
    "truncate-half": _truncate(lambda n: n // 2),
    "truncate-empty": _truncate(lambda n: 0),
    "append-byte": _append,
    "zero-filled": _zeroes,
    "deleted": _delete,
    "symlink": _symlink,
    "directory": _directory,
    "fifo": _fifo,
}


def _files(gen: Path) -> list[str]:
    return sorted(
        str(p.relative_to(gen))
        for p in gen.rglob("*")
        if p.is_file() and p.name not in ("RESTORED", "FAILED")
    )


def _make_generations(agent: AgentHarness) -> tuple[str, str]:
    box = agent.start(APP, env=keyed_env(agent))
    try:
        wait_count(box, 5)
        older = agent.checkpoint(box)
        wait_count(box, len(counts(box)) + 5)
        box.signal(signal.SIGTERM)
        assert box.wait(60) == CHECKPOINTED
    finally:
        box.destroy()
    newest = agent.latest()
    assert newest is not None
    return older, newest


def test_every_corruption_of_every_file_is_detected(
    agent: AgentHarness, tally: Tally, seed: int
) -> None:
    older, newest = _make_generations(agent)
    snapshot = agent.store_dir.parent / "snapshot"
    copy_store(agent.app_store, snapshot)
    gen_dir = agent.app_store / "generations" / newest
    names = _files(gen_dir)
    assert {"manifest.json", "files.json", "dump.log"} <= set(names)
    assert any(n.startswith("images/pages-") for n in names)
    assert any(n.startswith("files/") for n in names), names
    cases = [(name, kind) for name in names for kind in KINDS]
    cases += [("images/planted.img", "extra-file"), ("images", "extra-directory-entry")]
    for name, kind in cases:
        copy_store(snapshot, agent.app_store)
        target = gen_dir / name
        if kind == "extra-file":
            target.write_bytes(b"not listed")
        elif kind == "extra-directory-entry":
            (target / "sub").mkdir()
            (target / "sub" / "x.img").write_bytes(b"x")
        else:
            KINDS[kind](target)
        store = store_of(agent)
        with pytest.raises(GenerationInvalidError):
            store.verify(store.generation(newest))
        store.verify(store.generation(older))  # the other generation is untouched
        tally.add("corruption-detected")

    rng = random.Random(f"{seed}-corruption")
    sample = rng.sample([c for c in cases if c[1] in KINDS], AGENT_CASES - 1)
    sample.append(("manifest.json", "deleted"))
    for name, kind in sample:
        copy_store(snapshot, agent.app_store)
        KINDS[kind](gen_dir / name)
        box = agent.start(APP, env=keyed_env(agent))
        try:
            assert wait_for(lambda b=box: phases(b, "restore", "ok"), 30), (name, kind)
            no_traceback(box)
            (ok,) = phases(box, "restore", "ok")
            assert ok["generation"] == older, (name, kind, box.stderr_text()[-2000:])
            refused = [r["generation"] for r in phases(box, "restore", "failed")]
            damaged = [r["removed"] for r in phases(box, "cleanup", "damaged")]
            assert refused == [newest] or damaged == [[newest]], (name, kind)
            assert wait_count(box, 1)[0] > 1
        finally:
            box.destroy()
        damaged_gen = agent.app_store / "generations" / newest
        assert not damaged_gen.exists() or (damaged_gen / "FAILED").exists()
        tally.add("corruption-agent")
