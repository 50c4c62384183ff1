"""The store's commit protocol and restore choice, on a plain directory (no root, no CRIU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podckpt.agent.errors import GenerationInvalidError, StoreMismatchError
from podckpt.agent.generations import COMPLETED, FAILED, RESTORED, Generation
from podckpt.agent.store import Store


def _store(tmp_path: Path, container: str = "app") -> Store:
    store = Store(tmp_path / "store", container)
    store.open()
    return store


def _dump(store: Store, payload: bytes = b"pages") -> Generation:
    gen = store.begin()
    (gen.images / "pages-1.img").write_bytes(payload)
    (gen.path / "files").mkdir()
    (gen.path / "files" / "log.txt").write_text("saved")
    return gen


def _commit(store: Store, payload: bytes = b"pages") -> Generation:
    gen = _dump(store, payload)
    store.commit(gen, {"criu_version": "4.2.1"})
    return gen


def test_open_records_layout_and_container(tmp_path: Path) -> None:
    store = _store(tmp_path)
    meta = json.loads((store.root / "store.json").read_text())
    assert meta == {"layout": 1, "container": "app"}
    Store(store.root, "app").open()  # the same container reopens it


def test_store_of_another_container_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path, "app")
    with pytest.raises(StoreMismatchError, match="belongs to container 'app', not 'web'"):
        Store(store.root, "web").open()


def test_unknown_layout_version_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    (store.root / "store.json").write_text('{"layout": 9, "container": "app"}')
    with pytest.raises(StoreMismatchError, match="unknown layout version 9"):
        Store(store.root, "app").open()


def test_commit_writes_manifest_with_checksums_and_moves_latest(tmp_path: Path) -> None:
    store = _store(tmp_path)
    gen = _commit(store)
    assert store.latest_name() == gen.name
    manifest = json.loads((gen.path / "manifest.json").read_text())
    assert manifest["format"] == 2
    assert manifest["container"] == "app"
    assert set(manifest["checksums"]) == {"images/pages-1.img", "files/log.txt"}
    assert manifest["checksums"]["images/pages-1.img"]["size"] == 5
    assert store.verify(gen).generation == gen.name
    assert [g.name for g in store.candidates()] == [gen.name]


def test_sequence_orders_generations_not_the_clock(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first = _commit(store)
    second = _commit(store)
    assert second.seq == first.seq + 1
    assert [g.name for g in store.candidates()] == [second.name, first.name]


def test_uncommitted_dump_is_ignored_and_cleaned(tmp_path: Path) -> None:
    store = _store(tmp_path)
    good = _commit(store)
    half = _dump(store)  # killed before its manifest
    assert store.latest_name() == good.name
    assert [g.name for g in store.candidates()] == [good.name]
    assert [r.name for r in store.cleanup()] == [half.name]
    assert not half.path.exists()
    assert good.path.exists()


def test_manifest_without_latest_is_not_committed(tmp_path: Path) -> None:
    store = _store(tmp_path)
    good = _commit(store)
    late = _dump(store)
    (late.path / "manifest.json").write_text(json.dumps({"format": 1}))  # killed before LATEST
    assert [g.name for g in store.candidates()] == [good.name]
    assert [r.name for r in store.cleanup()] == [late.name]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_bytes(b"PAGES"), "corrupted"),
        (lambda p: p.write_bytes(b"pa"), "truncated"),
        (lambda p: p.unlink(), "missing"),
    ],
)
def test_verify_detects_damage(tmp_path: Path, damage, reason: str) -> None:  # type: ignore[no-untyped-def]
    store = _store(tmp_path)
    gen = _commit(store)
    damage(gen.images / "pages-1.img")
    with pytest.raises(GenerationInvalidError, match=reason):
        store.verify(gen)


def test_unknown_manifest_format_is_invalid(tmp_path: Path) -> None:
    store = _store(tmp_path)
    gen = _commit(store)
    manifest = json.loads((gen.path / "manifest.json").read_text())
    (gen.path / "manifest.json").write_text(json.dumps({**manifest, "format": 7}))
    with pytest.raises(GenerationInvalidError, match="unknown manifest format 7"):
        store.verify(gen)


def test_failed_generation_is_skipped_for_the_older_one(tmp_path: Path) -> None:
    store = _store(tmp_path)
    older = _commit(store)
    newer = _commit(store)
    store.mark(newer, FAILED)
    assert [g.name for g in store.candidates()] == [older.name]


def test_restored_generation_and_older_ones_are_never_restored_again(tmp_path: Path) -> None:
    store = _store(tmp_path)
    older = _commit(store)
    newer = _commit(store)
    store.retire(newer, diagnosis=True)
    assert (newer.path / RESTORED).exists()
    assert store.candidates() == []
    assert older.path.exists()
    store.retire(None, diagnosis=False)
    assert not older.path.exists()
    assert not newer.path.exists()


def test_completed_blocks_restore_until_the_next_commit(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _commit(store)
    store.mark_completed(diagnosis=False)
    assert (store.root / COMPLETED).exists()
    assert store.candidates() == []
    fresh = _commit(store)
    assert not (store.root / COMPLETED).exists()
    assert [g.name for g in store.candidates()] == [fresh.name]


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    store = _store(tmp_path)
    gens = [_commit(store) for _ in range(4)]
    removed = store.prune(2, diagnosis=False)
    assert removed == [gens[0].name, gens[1].name]
    assert [g.name for g in store.committed()] == [gens[2].name, gens[3].name]


def test_discard_refuses_the_committed_generation(tmp_path: Path) -> None:
    store = _store(tmp_path)
    gen = _commit(store)
    with pytest.raises(Exception, match="refusing"):
        store.discard(gen)
    assert gen.path.exists()


def test_lock_is_exclusive(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with store.lock(), pytest.raises(Exception, match="locked"), store.lock(timeout=0.1):
        pass


def test_unrestored_counts_failed_but_not_history(tmp_path: Path) -> None:
    store = _store(tmp_path)
    older = _commit(store)
    store.retire(older, diagnosis=True)
    assert store.unrestored() == []
    newer = _commit(store)
    store.mark(newer, FAILED)
    assert store.candidates() == []
    assert [g.name for g in store.unrestored()] == [newer.name]
