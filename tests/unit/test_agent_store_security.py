"""Issue 11.5: checkpoints at rest. The store is private (0700/0600, root), manifests are
authenticated with the namespace's store key, and a generation whose manifest does not verify,
whose paths leave the store, or that asks for a setuid/setgid file the agent did not record is
refused. Each attack is a test that fails on podckpt 0.1.0."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from podckpt.agent import files, manifest
from podckpt.agent.errors import GenerationInvalidError
from podckpt.agent.generations import Generation
from podckpt.agent.inputs import BadInput
from podckpt.agent.manifest import Trust
from podckpt.agent.store import Store

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


def _store(tmp_path: Path, trust: Trust | None = None, identity: str = "job-a") -> Store:
    store = Store(tmp_path / "volume" / identity / "app", "app", trust or Trust(KEY))
    store.open()
    return store


def _commit(store: Store, fields: dict[str, object] | None = None) -> Generation:
    old = os.umask(0o022)  # CRIU writes its images with the container's umask
    try:
        gen = store.begin()
        (gen.images / "pages-1.img").write_bytes(b"pages")
        (gen.images / "core-300.img").write_bytes(b"core")
    finally:
        os.umask(old)
    store.commit(gen, {"criu_version": "4.2.1", **(fields or {})})
    return gen


def _rewrite(gen: Generation, **changes: object) -> None:
    path = gen.path / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _modes(root: Path) -> set[tuple[str, int]]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out.add(("dir", stat.S_IMODE(os.lstat(Path(dirpath) / name).st_mode)))
        for name in filenames:
            out.add(("file", stat.S_IMODE(os.lstat(Path(dirpath) / name).st_mode)))
    return out


def test_store_directories_are_0700_and_files_0600(tmp_path: Path) -> None:
    store = _store(tmp_path)
    gen = _commit(store)
    store.mark(gen, "RESTORED")
    with store.lock():
        pass
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.root.parent).st_mode) == 0o700
    assert _modes(store.root) == {("dir", 0o700), ("file", 0o600)}
    if os.geteuid() == 0:
        assert {os.lstat(Path(d) / n).st_uid for d, _, ns in os.walk(store.root) for n in ns} == {0}


def test_a_store_of_podckpt_0_1_is_made_private_when_opened(tmp_path: Path) -> None:
    root = tmp_path / "volume" / "job-a" / "app"
    (root / "generations").mkdir(parents=True, mode=0o755)
    root.chmod(0o755)
    (root / "store.json").write_text('{"layout": 1, "container": "app"}')
    Store(root, "app").open()
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(root / "generations").st_mode) == 0o700


def test_signed_manifest_verifies_with_the_key(tmp_path: Path) -> None:
    store = _store(tmp_path)
    gen = _commit(store)
    body = json.loads((gen.path / "manifest.json").read_text())
    assert body["format"] == manifest.FORMAT
    assert body["hmac"]["alg"] == "HMAC-SHA256"
    assert body["store"] == "job-a/app"
    assert store.verify(gen).authenticated


def test_manifest_with_a_wrong_hmac_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    gen = _commit(store)
    body = json.loads((gen.path / "manifest.json").read_text())
    body["hmac"]["value"] = "0" * 64
    (gen.path / "manifest.json").write_text(json.dumps(body))
    with pytest.raises(GenerationInvalidError, match="does not verify: HMAC mismatch"):
        store.verify(gen)


def test_manifest_signed_with_another_namespaces_key_is_refused(tmp_path: Path) -> None:
    gen = _commit(_store(tmp_path, Trust(OTHER_KEY)))
    with pytest.raises(GenerationInvalidError, match="signed with key"):
        _store(tmp_path).verify(gen)


def test_forged_image_with_recomputed_checksums_is_refused(tmp_path: Path) -> None:
    """Whoever can write the volume can recompute sha256; only the key holder can sign."""
    store = _store(tmp_path)
    gen = _commit(store)
    forged = b"evil core image"
    (gen.images / "core-300.img").write_bytes(forged)
    body = json.loads((gen.path / "manifest.json").read_text())
    body["checksums"]["images/core-300.img"] = {
        "size": len(forged),
        "sha256": hashlib.sha256(forged).hexdigest(),
    }
    (gen.path / "manifest.json").write_text(json.dumps(body))
    with pytest.raises(GenerationInvalidError, match="HMAC mismatch"):
        store.verify(gen)


def test_unsigned_manifest_is_refused_when_the_agent_has_a_key(tmp_path: Path) -> None:
    gen = _commit(_store(tmp_path, Trust(None)))
    with pytest.raises(GenerationInvalidError, match="carries no HMAC"):
        _store(tmp_path).verify(gen)


def test_podckpt_0_1_manifest_is_accepted_only_when_asked(tmp_path: Path) -> None:
    gen = _commit(_store(tmp_path, Trust(None)))
    legacy = json.loads((gen.path / "manifest.json").read_text())
    legacy["format"] = manifest.LEGACY_FORMAT
    del legacy["store"]
    (gen.path / "manifest.json").write_text(json.dumps(legacy))
    with pytest.raises(GenerationInvalidError, match="carries no HMAC"):
        _store(tmp_path).verify(gen)
    accepting = _store(tmp_path, Trust(KEY, accept_unsigned=True))
    assert not accepting.verify(gen).authenticated
    assert not _store(tmp_path, Trust(None)).verify(gen).authenticated


def test_generation_moved_into_another_workloads_store_is_refused(tmp_path: Path) -> None:
    gen = _commit(_store(tmp_path, identity="job-a"))
    other = _store(tmp_path, identity="job-b")
    os.rename(gen.path, other.generations_dir / gen.name)
    with pytest.raises(GenerationInvalidError, match="made for store 'job-a/app'"):
        other.verify(other.generation(gen.name))


def test_generation_replayed_under_a_newer_name_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    gen = _commit(store)
    replay = store.generation(gen.name[:-6] + "000099")
    os.rename(gen.path, replay.path)
    with pytest.raises(GenerationInvalidError, match="names generation"):
        store.verify(replay)


@pytest.mark.parametrize("rel", ["../../../etc/passwd", "/etc/passwd", "images/../x", "./x"])
def test_manifest_path_that_leaves_the_generation_is_refused(tmp_path: Path, rel: str) -> None:
    store = _store(tmp_path, Trust(None))
    gen = _commit(store)
    body = json.loads((gen.path / "manifest.json").read_text())
    body["checksums"][rel] = {"size": 1, "sha256": "0" * 64}
    (gen.path / "manifest.json").write_text(json.dumps(body))
    with pytest.raises(GenerationInvalidError, match="leaves the generation"):
        store.verify(gen)


def test_image_replaced_by_a_symlink_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path, Trust(None))
    gen = _commit(store)
    outside = tmp_path / "outside"
    outside.write_bytes(b"pages")
    (gen.images / "pages-1.img").unlink()
    (gen.images / "pages-1.img").symlink_to(outside)
    with pytest.raises(GenerationInvalidError, match="symbolic link"):
        store.verify(gen)


def test_images_directory_replaced_by_a_symlink_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path, Trust(None))
    gen = _commit(store)
    os.rename(gen.images, tmp_path / "elsewhere")
    gen.images.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(GenerationInvalidError, match="symbolic link"):
        store.verify(gen)


def test_file_the_manifest_does_not_list_is_refused(tmp_path: Path) -> None:
    """CRIU reads optional images by name: a planted one would be restored."""
    store = _store(tmp_path, Trust(None))
    gen = _commit(store)
    (gen.images / "tty-info.img").write_bytes(b"planted")
    with pytest.raises(GenerationInvalidError, match=r"does not list: images/tty-info\.img"):
        store.verify(gen)


def _entry(path: str, mode: int = 0o644, kind: str = "file") -> dict[str, object]:
    return {
        "path": path,
        "kind": kind,
        "mode": mode,
        "uid": os.getuid(),
        "gid": os.getgid(),
        "mtime_ns": 0,
        "atime_ns": 0,
        "size": 1,
    }


@pytest.mark.parametrize(
    "path", ["/tmp/../etc/passwd", "etc/passwd", "/tmp//x", "/tmp/./x", "/tmp/", "/a\0b"]
)
def test_files_json_path_that_is_not_plain_is_refused(tmp_path: Path, path: str) -> None:
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "files.json").write_text(json.dumps([_entry(path)]))
    with pytest.raises(GenerationInvalidError, match="not a normalised absolute path"):
        files.put_back(gen)


def test_setuid_file_the_agent_did_not_record_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "root" / "bin" / "sh"
    gen = tmp_path / "gen"
    (gen / "files" / str(target.parent).lstrip("/")).mkdir(parents=True)
    (gen / "files" / str(target).lstrip("/")).write_bytes(b"x")
    (gen / "files.json").write_text(json.dumps([_entry(str(target), 0o4755)]))
    with pytest.raises(GenerationInvalidError, match=r"setuid/setgid file .* did not record"):
        files.put_back(gen)
    assert not target.exists()
    written = files.put_back(gen, frozenset({str(target)}))
    assert written == [str(target)]
    assert stat.S_IMODE(target.stat().st_mode) == 0o4755


def test_saved_copy_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "restored"
    gen = tmp_path / "gen"
    copy = gen / "files" / str(target).lstrip("/")
    copy.parent.mkdir(parents=True)
    (tmp_path / "secret").write_text("s")
    copy.symlink_to(tmp_path / "secret")
    (gen / "files.json").write_text(json.dumps([_entry(str(target))]))
    with pytest.raises(GenerationInvalidError, match="symbolic link"):
        files.put_back(gen)


def test_put_back_never_writes_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    target = tmp_path / "app.log"
    target.symlink_to(victim)
    gen = tmp_path / "gen"
    copy = gen / "files" / str(target).lstrip("/")
    copy.parent.mkdir(parents=True)
    copy.write_text("log")
    (gen / "files.json").write_text(json.dumps([_entry(str(target), 0o600)]))
    files.put_back(gen)
    assert victim.read_text() == "untouched"
    assert not target.is_symlink()
    assert target.read_text() == "log"


def test_saved_copies_are_0600_and_keep_their_mode_and_owner_when_put_back(
    tmp_path: Path,
) -> None:
    key = tmp_path / "app" / "key.pem"
    key.parent.mkdir()
    key.write_text("-----BEGIN KEY-----")
    key.chmod(0o600)
    owner = (1234, 2345) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        os.chown(key, *owner)
    dest = tmp_path / "gen"
    dest.mkdir()
    entries = files.save([str(key)], [], dest)
    copy = dest / "files" / str(key).lstrip("/")
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "files.json").stat().st_mode) == 0o600
    assert _modes(dest / "files") <= {("dir", 0o700), ("file", 0o600)}
    assert entries[-1]["mode"] == 0o600
    key.unlink()
    files.put_back(dest)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (key.stat().st_uid, key.stat().st_gid) == owner
    assert key.read_text() == "-----BEGIN KEY-----"


def test_store_key_shorter_than_16_bytes_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "key"
    short.write_bytes(b"short")
    with pytest.raises(BadInput, match="at least 16"):
        manifest.load_key(short)
    short.write_bytes(KEY)
    assert manifest.load_key(short) == KEY
