"""cached_build's lock, temp-dir and atomic-rename logic, with a fake builder (no root)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from podckpt.devtools import rootfs


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PODCKPT_CACHE", str(tmp_path))
    return tmp_path / "rootfs"


def test_concurrent_callers_build_once(cache):
    calls = []

    def builder(d: Path) -> None:
        calls.append(d)
        time.sleep(0.3)
        (d / "done").write_text("yes")

    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(rootfs.cached_build("x-1", builder)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [cache / "x-1"] * 3
    assert (cache / "x-1/done").read_text() == "yes"


def test_failed_build_leaves_nothing(cache):
    def builder(d: Path) -> None:
        (d / "partial").write_text("")
        raise rootfs.RootfsError("mirror unreachable")

    with pytest.raises(rootfs.RootfsError):
        rootfs.cached_build("y-1", builder)
    assert sorted(p.name for p in cache.iterdir()) == [".y-1.lock"]


def test_stale_temp_dir_is_removed(cache):
    cache.mkdir(parents=True)
    (cache / ".z-1.tmp-dead").mkdir()
    rootfs.cached_build("z-1", lambda d: None)
    assert not (cache / ".z-1.tmp-dead").exists()


def test_criu_version_needs_stamp(tmp_path):
    with pytest.raises(rootfs.RootfsError):
        rootfs.criu_version(tmp_path)
