"""How the conformance suite reads zdtm's Makefile and .desc files (synthetic copies: the real
suite is in tests/conformance), and how it compares raw CRIU with the agent."""

from __future__ import annotations

from pathlib import Path

from podckpt.devtools.zdtm import selection, suite
from podckpt.devtools.zdtm.runner import Case, Outcome


def _static(tmp_path: Path) -> Path:
    static = tmp_path / "static"
    static.mkdir()
    (static / "Makefile").write_text(
        "TST_NOFILE\t:=\t\t\\\n"
        "\t\tenv00\t\t\\\n"
        "\t\tstopped\t\t\\\n"
        "\t\tsem\t\t\\\n"
        "\t\tcgroup00\t\\\n"
        "#\t\tjobctl00\t\\\n"
        "\n"
        "TST_FILE\t=\t\\\n"
        "\t\tunlink_fstat03\t\\\n"
        "\t\tsocket-tcp-close0\n"
        "TST\t=\tumask00\n"
    )
    (static / "sem.desc").write_text("{'flavor': 'ns uns'}")
    (static / "cgroup00.desc").write_text("{'flavor': 'h', 'opts': '--manage-cgroups'}")
    (static / "unlink_fstat03.desc").write_text("{'opts': '--link-remap', 'flags': 'nouser'}")
    (static / "socket-tcp-close0.desc").write_text(
        "{'dopts': '--tcp-established', 'ropts': '--tcp-close', 'flags': 'reqrst '}"
    )
    (static / "stopped.desc").write_text("{'flags': 'noauto'}")
    return static


def test_entries_read_the_makefile_as_make_does_and_the_desc_files(tmp_path: Path) -> None:
    entries = {e.name: e for e in selection.entries(_static(tmp_path))}
    # `#  jobctl00 \` comments out the rest of the list, as make reads it.
    assert set(entries) == {
        "env00", "stopped", "sem", "cgroup00", "unlink_fstat03", "socket-tcp-close0", "umask00"
    }  # fmt: skip
    assert entries["env00"].case == Case("env00", ("--envname=ENV_00_TEST",))
    assert entries["stopped"].case is None
    assert "noauto" in entries["stopped"].reason
    sem = entries["sem"].case
    assert sem is not None
    assert sem.private_ipc
    assert entries["cgroup00"].case is None
    assert "--manage-cgroups" in entries["cgroup00"].reason
    unlink = entries["unlink_fstat03"].case
    assert unlink is not None
    assert unlink.args == ("--filename=unlink_fstat03.test",)
    assert unlink.dump_options == ("link-remap",)
    assert unlink.restore_options == ("link-remap",)
    close0 = entries["socket-tcp-close0"].case
    assert close0 is not None
    assert close0.dump_options == ("tcp-established",)
    assert close0.restore_options == ("tcp-close",)
    listing = selection.listing(tmp_path / "static")
    assert "| cgroup00 | no | needs CRIU option --manage-cgroups" in listing
    assert "| sem | CI | checkpoint-ipc-namespace: private |" in listing  # in CI_TESTS


def test_the_agent_is_behind_only_where_raw_criu_passed() -> None:
    case = Case("t", dump_options=("link-remap",))
    ok, bad = Outcome(True, "passed"), Outcome(False, "check", "FAIL")
    behind = suite.Result(case, {"raw": ok, "agent": bad, "raw+opts": bad, "agent+keys": bad})
    assert behind.agent_behind() == ["agent"]
    even = suite.Result(case, {"raw": bad, "agent": bad, "raw+opts": ok, "agent+keys": ok})
    assert even.agent_behind() == []
    summary = suite.summary([behind, even])
    assert summary["agent_behind"] == {"t": ["agent"]}
    assert summary["columns"]["raw+opts"] == {"ran": 2, "passed": 1}  # type: ignore[index]
