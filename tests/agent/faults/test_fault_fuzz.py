"""A fuzz pass over everything the agent reads (issue 16.2): store.json, LATEST, manifests,
files.json, the downward-API labels and annotations files, control-socket requests.

Random bytes and seeded mutations of real files (bit flips, truncations, splices, JSON values
replaced by values of other types, keys dropped, deep nesting, huge numbers, odd strings).
In-process, against the agent's own parsing code, every case ends in a value or in the one
exception type the caller turns into a fallback or a one-line error, never in anything else.
A sample goes through the real agent with real CRIU: no traceback, no crash loop (the
application runs; only the downward-API files may stop the agent, with exit 200 and one
line), and the generations the fuzz did not touch still restore.
"""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agent_harness import MODE, AgentHarness, counts, phases, wait_count
from faultkit import KEY, Tally, copy_store, keyed_env, no_traceback, store_of

from podckpt.agent import control, criurestore, files
from podckpt.agent.errors import GenerationInvalidError, StoreError, UsageError
from podckpt.agent.exitcodes import AGENT_FAILURE, CHECKPOINTED
from podckpt.agent.manifest import Trust
from podckpt.agent.settings import LiveSettings
from podckpt.agent.store import Store
from podckpt.api import format_downward_text
from podckpt.devtools.sandbox import wait_for

pytestmark = pytest.mark.criu

APP = ["python3", "/apps/files_app.py"]

ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 2**63, -(2**70), 1e308, 0.5, "", "x" * 5000, "../../etc/passwd",
    "/", "\u0000", "é", [], [1, [2, [3]]], {}, {"a": {"b": {}}}, "pipe:[1]",
]  # fmt: skip


# ---- mutations ---------------------------------------------------------------------------------


def _bytes_mutation(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data or b"\0")
    choice = rng.randrange(6)
    if choice == 0:  # flip bits
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif choice == 1:  # truncate
        del data[rng.randrange(len(data)) :]
    elif choice == 2:  # insert random bytes
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(rng.randint(1, 64))
    elif choice == 3:  # splice a chunk of itself elsewhere
        a, b = sorted(rng.randrange(len(data) + 1) for _ in range(2))
        at = rng.randrange(len(data) + 1)
        data[at:at] = data[a:b]
    elif choice == 4:  # non-UTF-8 byte
        data[rng.randrange(len(data))] = rng.choice([0x80, 0xC0, 0xFF, 0xFE])
    else:  # random bytes altogether
        return rng.randbytes(rng.randint(0, 512))
    return bytes(data)


def _mutate_value(rng: random.Random, value: Any, depth: int = 0) -> Any:
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        out = dict(value)
        action = rng.randrange(4)
        if action == 0:
            del out[key]
        elif action == 1:
            out[key] = rng.choice(ODD_VALUES)
        elif action == 2:
            out[key] = _mutate_value(rng, out[key], depth + 1)
        else:
            out[rng.choice(["extra", key + "x", ""])] = rng.choice(ODD_VALUES)
        return out
    if isinstance(value, list) and value and rng.random() < 0.8:
        out = list(value)
        index = rng.randrange(len(out))
        action = rng.randrange(3)
        if action == 0:
            del out[index]
        elif action == 1:
            out[index] = rng.choice(ODD_VALUES)
        else:
            out[index] = _mutate_value(rng, out[index], depth + 1)
        return out
    return rng.choice(ODD_VALUES)


def _json_mutation(rng: random.Random, data: bytes) -> bytes:
    choice = rng.randrange(10)
    if choice < 6:
        value = json.loads(data)
        for _ in range(rng.randint(1, 3)):
            value = _mutate_value(rng, value)
        return json.dumps(value).encode()
    if choice == 6:
        depth = rng.choice([50, 1000, 100_000])
        return (b"[" * depth) + (b"]" * depth if rng.random() < 0.5 else b"")
    if choice == 7:
        return rng.choice([b"NaN", b"Infinity", b"1e999999", b"-0", b'"\\ud800"', b"null"])
    return _bytes_mutation(rng, data)


def _mutations(rng: random.Random, seed_data: bytes, count: int) -> list[bytes]:
    try:
        json.loads(seed_data)
        is_json = True
    except ValueError:
        is_json = False
    return [
        _json_mutation(rng, seed_data)
        if is_json and rng.random() < 0.6
        else _bytes_mutation(rng, seed_data)
        for _ in range(count)
    ]


def _downward_mutation(rng: random.Random, text: bytes) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return _bytes_mutation(rng, text)
    if choice == 1:
        value = rng.choice(["true", "false", "yes please", "", "10s", "-1", "2GG", "\\x80", "é"])
        key = rng.choice([MODE, "memverge.ai/checkpoint-keep", "memverge.ai/checkpoint-files"])
        return f'{key}="{value}"\n'.encode()
    if choice == 2:
        return rng.choice([b'a="\\', b'a="\\x4"', b'a="\\U0011ffff"', b'a="\\777"', b"=\n"])
    return rng.randbytes(rng.randint(0, 200))


# ---- in-process -------------------------------------------------------------------------------


def _expect(fn: Callable[[], object], allowed: tuple[type[BaseException], ...], what: str) -> None:
    try:
        fn()
    except allowed:
        pass
    except Exception as exc:  # the point: any other exception is a finding
        raise AssertionError(f"{what}: {type(exc).__name__}: {exc}") from exc


def _generation_files(agent: AgentHarness) -> tuple[Path, str, str]:
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
    snapshot = agent.store_dir.parent / "snapshot"
    copy_store(agent.app_store, snapshot)
    return snapshot, older, newest


def test_fuzz_the_agents_inputs(
    agent: AgentHarness, tmp_path: Path, seed: int, tally: Tally
) -> None:
    snapshot, older, newest = _generation_files(agent)
    rng = random.Random(f"{seed}-fuzz")
    work = tmp_path / "fuzz" / "store" / "app"  # the same store identity as the agent's

    def fresh_store() -> Path:
        copy_store(snapshot, work)
        return work

    # store.json: repaired, refused (unknown layout, other container), or fine.
    original = (snapshot / "store.json").read_bytes()
    for data in _mutations(rng, original, 250):
        root = fresh_store()
        (root / "store.json").write_bytes(data)
        store = Store(root, "app", Trust(KEY))
        _expect(lambda s=store: (s.open(), s.candidates()), (StoreError,), f"store.json {data!r}")
        tally.add("fuzz-in-process")

    # LATEST: a value or None, and the committed generations it implies.
    for data in _mutations(rng, (snapshot / "LATEST").read_bytes(), 150):
        root = fresh_store()
        (root / "LATEST").write_bytes(data)
        store = Store(root, "app", Trust(KEY))
        _expect(lambda s=store: (s.candidates(), s.cleanup()), (), f"LATEST {data!r}")
        tally.add("fuzz-in-process")

    # manifest.json, with and without a key (without one, more of it reaches the checks).
    manifest = (snapshot / "generations" / newest / "manifest.json").read_bytes()
    for index, data in enumerate(_mutations(rng, manifest, 400)):
        root = fresh_store()
        (root / "generations" / newest / "manifest.json").write_bytes(data)
        store = Store(root, "app", Trust(KEY if index % 2 else None))

        def use(s: Store = store) -> None:
            parsed = s.verify(s.generation(newest))
            criurestore.inherit_map(parsed.stdio)
            accessed = [parsed.workload, parsed.lineage_start, parsed.setid_files, parsed.root_pid]
            assert len(accessed) == 4
            files.load_entries(s.generation(newest).path, parsed.setid_files)

        _expect(use, (GenerationInvalidError,), f"manifest {data[:200]!r}")
        store.verify(store.generation(older))  # never the other generation
        tally.add("fuzz-in-process")

    # files.json (checked before anything is put back; nothing is written here).
    entries = (snapshot / "generations" / newest / "files.json").read_bytes()
    for data in _mutations(rng, entries, 250):
        root = fresh_store()
        gen = root / "generations" / newest
        (gen / "files.json").write_bytes(data)
        _expect(
            lambda g=gen: files.load_entries(g, frozenset()),
            (GenerationInvalidError,),
            f"files.json {data[:200]!r}",
        )
        tally.add("fuzz-in-process")

    # Downward-API files: settings, or one UsageError naming the file.
    labels = format_downward_text({MODE: "true", "app": "web"}).encode()
    annotations = format_downward_text({"memverge.ai/checkpoint-files": "/srv,/etc/x"}).encode()
    for index in range(250):
        (tmp_path / "labels").write_bytes(_downward_mutation(rng, labels))
        (tmp_path / "annotations").write_bytes(
            _downward_mutation(rng, annotations) if index % 2 else annotations
        )
        live = LiveSettings(tmp_path / "labels", tmp_path / "annotations")
        _expect(live.read, (UsageError,), f"downward {(tmp_path / 'labels').read_bytes()!r}")
        tally.add("fuzz-in-process")

    # Control requests.
    request = b'{"op": "checkpoint"}\n'
    for data in [*_mutations(rng, request, 100), *(rng.randbytes(64) for _ in range(50))]:
        result = control.decode_op(data)
        assert result is None or isinstance(result, str)
        tally.add("fuzz-in-process")


def test_fuzzed_inputs_with_the_real_agent(agent: AgentHarness, seed: int, tally: Tally) -> None:
    snapshot, older, newest = _generation_files(agent)
    rng = random.Random(f"{seed}-fuzz-agent")
    newest_manifest = f"generations/{newest}/manifest.json"
    newest_files = f"generations/{newest}/files.json"
    targets = [
        ("store.json", 3),
        ("LATEST", 2),
        (newest_manifest, 4),
        (newest_files, 3),
        ("labels", 2),
        ("annotations", 1),
    ]
    for target, count in targets:
        for _ in range(count):
            copy_store(snapshot, agent.app_store)
            env = keyed_env(agent)
            agent.set_labels({MODE: "true"})
            agent.set_annotations({})
            if target in ("labels", "annotations"):
                fuzzed = rng.randbytes(rng.randint(1, 100)) + b"\xff"
                (agent.labels_dir / target).write_bytes(fuzzed)
            else:
                path = agent.app_store / target
                path.write_bytes(_mutations(rng, path.read_bytes(), 1)[0])
            box = agent.start(
                APP,
                env=env,
                agent_args=[
                    "--labels-file",
                    "/etc/podinfo/labels",
                    "--annotations-file",
                    "/etc/podinfo/annotations",
                ],
            )
            try:
                if target in ("labels", "annotations"):
                    assert box.wait(30) == AGENT_FAILURE
                    lines = box.stderr_text().splitlines()
                    errors = [line for line in lines if line.startswith("podckpt")]
                    assert len(errors) == 1, box.stderr_text()
                    assert f"/etc/podinfo/{target}" in errors[0]
                else:
                    assert wait_for(lambda b=box: counts(b) or not b.alive(), 30)
                    assert box.alive(), box.stderr_text()[-2000:]
                    restored = [r["generation"] for r in phases(box, "restore", "ok")]
                    if target in (newest_manifest, newest_files):
                        assert restored in ([newest], [older]), (target, box.stderr_text())
                    elif target == "LATEST":
                        # Damaged: the newest manifest counts; another valid name: that one.
                        assert restored in ([newest], [older]), box.stderr_text()[-2000:]
                no_traceback(box)
            finally:
                box.destroy()
            tally.add("fuzz-agent")
    assert os.path.exists(agent.app_store)
    assert store_of(agent).container == "app"
