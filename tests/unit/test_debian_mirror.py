"""The Debian mirror comes from the environment or the host's own apt sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from podckpt.bundle.debian import MirrorNotFoundError, debian_mirror


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    debian_mirror.cache_clear()
    monkeypatch.delenv("PODCKPT_DEBIAN_MIRROR", raising=False)


def test_deb822_sources_main_archive_wins_over_security(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.test/debian/\nSuites: bookworm\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.test/debian"


def test_one_line_sources_with_options(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [signed-by=/k.gpg] http://local.test/debian bookworm main\n"
    )
    assert debian_mirror(tmp_path) == "http://local.test/debian"


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODCKPT_DEBIAN_MIRROR", "http://env.test/debian/")
    assert debian_mirror(tmp_path) == "http://env.test/debian"


def test_no_mirror_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MirrorNotFoundError, match="set PODCKPT_DEBIAN_MIRROR"):
        debian_mirror(tmp_path)
