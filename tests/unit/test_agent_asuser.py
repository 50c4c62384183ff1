"""asuser.py: what a dump as the application's user needs, and reading /proc as that user."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from podckpt.agent import asuser
from podckpt.agent.capabilities import CAP_NUMBERS
from podckpt.agent.errors import EnvironmentProblem


def _mask(*names: str) -> int:
    return sum(1 << CAP_NUMBERS[n] for n in names)


def test_user_dump_names_the_missing_capabilities() -> None:
    asuser.check(1000, 1000, _mask(*asuser.NEEDED_FOR_USER_DUMP))
    with pytest.raises(EnvironmentProblem, match=r"uid 1000 gid 1000: .* CAP_SETUID, CAP_SETGID"):
        asuser.check(1000, 1000, _mask("CAP_DAC_OVERRIDE"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_reading_as_another_user_is_undone(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0o600)
    with asuser.reading_proc_of(65534, 65534), pytest.raises(PermissionError):
        secret.read_text()
    assert secret.read_text() == "x"
