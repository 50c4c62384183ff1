"""The application's user as the runtime would resolve it (agent/appuser.py), without CRIU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from podckpt.agent import appuser
from podckpt.agent.appuser import AppUser, UserError
from podckpt.api import contract

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment
app:x:1001:1001::/home/app:/bin/sh
web:x:33:33:www:/var/www:/usr/sbin/nologin
broken line
"""
GROUP = """\
root:x:0:
app:x:1001:
video:x:44:app,web
extra:x:3000:app
"""


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    (tmp_path / "passwd").write_text(PASSWD)
    (tmp_path / "group").write_text(GROUP)
    return tmp_path


def test_uid_gets_its_passwd_group_its_groups_and_home(etc: Path) -> None:
    user = appuser.from_ids("1001", (5000,), etc=etc)
    assert user == AppUser(1001, 1001, (5000, 44, 3000), "/home/app")


def test_explicit_gid_wins_and_strict_groups_skip_etc_group(etc: Path) -> None:
    user = appuser.from_ids("33:7", (5000,), strict_groups=True, etc=etc)
    assert user == AppUser(33, 7, (5000,), "/var/www")


def test_unknown_uid_gets_gid_0_and_home_slash(etc: Path) -> None:
    assert appuser.from_ids("4242", etc=etc) == AppUser(4242, 0, (), "/")


def test_no_etc_files_at_all(tmp_path: Path) -> None:
    assert appuser.from_ids("7:8", etc=tmp_path) == AppUser(7, 8, (), "/")


def test_non_numeric_user_is_refused(etc: Path) -> None:
    with pytest.raises(UserError, match="numeric"):
        appuser.from_ids("app", etc=etc)


def _probe_file(tmp_path: Path, data: object, uid: int | None = None) -> Path:
    path = tmp_path / "app"
    path.write_text(json.dumps(data))
    if uid is not None:
        os.chown(path, uid, -1)
    return path


def test_probe_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "app"
    appuser.write_probe(out, {"HOME": "/home/me"})
    user = appuser.from_probe(out)
    assert (user.uid, user.gid, user.home) == (os.getuid(), os.getgid(), "/home/me")
    assert user.gid not in user.groups


def test_probe_file_must_be_the_probes_own(tmp_path: Path) -> None:
    path = _probe_file(tmp_path, {"uid": os.getuid() + 1, "gid": 0})
    with pytest.raises(UserError, match="not written by the user probe"):
        appuser.from_probe(path)


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"uid": "0", "gid": 0},
        {"uid": -1, "gid": 0},
        {"gid": 0},
        {"uid": 0, "gid": 0, "home": 3},
    ],
)
def test_malformed_probe_files_are_refused(tmp_path: Path, data: object) -> None:
    with pytest.raises(UserError, match="malformed"):
        appuser.from_probe(_probe_file(tmp_path, data))


def test_probe_symlink_is_not_followed(tmp_path: Path) -> None:
    real = _probe_file(tmp_path, {"uid": os.getuid(), "gid": 0})
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(UserError, match="user probe file"):
        appuser.from_probe(link)


def test_missing_probe_file_says_who_writes_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="podckpt-user init container"):
        appuser.from_probe(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("options", "allowed"),
    [
        ({"user": "1001"}, True),
        ({"user": "0"}, False),
        ({"user": "0:1001"}, False),
        ({}, False),
    ],
)
def test_non_root_refuses_a_root_application(
    etc: Path, options: dict[str, str], allowed: bool
) -> None:
    command = contract.RunCommand(argv=("app",), non_root=True, **options)  # type: ignore[arg-type]
    if allowed:
        assert appuser.resolve(command, etc=etc) is not None
    else:
        with pytest.raises(UserError, match="runAsNonRoot is true"):
            appuser.resolve(command, etc=etc)


def test_home_follows_the_application_user_unless_set_otherwise(etc: Path) -> None:
    user = AppUser(1001, 1001, (), "/home/app")
    assert appuser.application_home(user, {"HOME": "/root"}, etc) == "/home/app"
    assert appuser.application_home(user, {}, etc) == "/home/app"
    assert appuser.application_home(user, {"HOME": "/data"}, etc) is None, "set by the pod"
    assert appuser.application_home(AppUser(0, 0, (), "/root"), {"HOME": "/root"}, etc) is None


def test_run_options_round_trip() -> None:
    command = contract.RunCommand(
        argv=("/app", "--x"),
        store="/s",
        container="app",
        user="1000:2000",
        groups=(3000, 4000),
        strict_groups=True,
        non_root=True,
        drop_capabilities=("CAP_CHECKPOINT_RESTORE", "CAP_SETPCAP"),
        control_socket="/run/x.sock",
    )
    assert contract.parse_run_args(command.agent_args()[1:], environ={}) == command
    probe = contract.RunCommand(argv=("/app",), user_probe="/.podckpt-user/app")
    assert contract.parse_run_args(probe.agent_args()[1:], environ={}) == probe
