"""CRIU options per workload: the two `*-advanced-options` keys, the `MMC_*` container variables,
the allowlist, and the keys of what the application is isolated from."""

from __future__ import annotations

import pytest

from podckpt.api import (
    InvalidValueError,
    IoUring,
    IpcNamespace,
    Key,
    Source,
    for_container,
    parse_settings,
)
from podckpt.api.container import literal_env
from podckpt.api.criuopts import (
    ALLOWED,
    Phase,
    capabilities_for,
    for_phase,
    mirrored,
    parse_options,
)

P = "memverge.ai/"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("tcp-established", ("tcp-established",)),
        ("--tcp-established,--link-remap", ("tcp-established", "link-remap")),
        ("--ghost-limit 128M  --file-locks", ("ghost-limit=128M", "file-locks")),
        ("ghost-limit=1G, ext-unix-sk", ("ghost-limit=1G", "ext-unix-sk")),
        ("shell-job,shell-job", ("shell-job",)),
        ("file-validation=buildid", ("file-validation=buildid",)),
        ("", ()),
    ],
)
def test_options_as_written_in_an_annotation_or_variable(
    value: str, expected: tuple[str, ...]
) -> None:
    assert parse_options("k", value) == expected


def test_options_in_a_label_are_dot_separated() -> None:
    # A label value holds neither ',' nor '=' nor a leading '-'.
    assert parse_options("k", "tcp-established.link-remap", label=True) == (
        "tcp-established",
        "link-remap",
    )


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("--external=mnt[]", "'external'"),
        ("tcp-established,--action-script=/bin/sh", "'action-script'"),
        ("manage-cgroups=full", "'manage-cgroups'"),
        ("leave-running", "'leave-running'"),
        ("ghost-limit", "ghost-limit needs a value"),
        ("ghost-limit=lots", "ghost-limit=a size"),
        ("link-remap=yes", "link-remap takes no value"),
        ("tcp-established tcp-close", "either tcp-established or tcp-close"),
    ],
)
def test_refused_options_name_the_option_and_the_allowlist(value: str, named: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        parse_options(P + "checkpoint-advanced-options", value)
    message = str(info.value)
    assert message.startswith(P + "checkpoint-advanced-options: invalid value")
    assert named in message
    if "either" not in named:
        assert "tcp-established, tcp-close, skip-in-flight, link-remap" in message


def test_the_allowlist_holds_at_least_what_the_issue_names() -> None:
    for name in (
        "tcp-established",
        "link-remap",
        "ghost-limit",
        "file-locks",
        "ext-unix-sk",
        "skip-in-flight",
        "shell-job",
    ):
        assert name in ALLOWED


def test_phases_mirroring_and_capabilities() -> None:
    options = ("tcp-established", "link-remap", "skip-file-rwx-check", "shell-job")
    assert for_phase(options, Phase.DUMP) == ("tcp-established", "link-remap", "shell-job")
    assert for_phase(options, Phase.RESTORE) == (
        "tcp-established",
        "skip-file-rwx-check",
        "shell-job",
    )
    assert mirrored(options) == ("tcp-established", "shell-job")
    assert capabilities_for(options) == ("CAP_NET_ADMIN", "CAP_DAC_READ_SEARCH")
    assert capabilities_for(("link-remap",)) == ("CAP_DAC_READ_SEARCH",)
    assert capabilities_for(("ghost-limit=1G", "file-locks")) == ()


def test_pod_keys_parse_into_settings() -> None:
    settings = parse_settings(
        {P + "checkpoint-advanced-options": "tcp-established.link-remap"},
        {
            P + "restore-advanced-options": "--tcp-close",
            P + "checkpoint-ipc-namespace": "private",
            P + "checkpoint-io-uring": "Deny",
        },
    )
    assert settings.checkpoint_options == ("tcp-established", "link-remap")
    assert settings.restore_options == ("tcp-close",)
    assert settings.ipc_namespace is IpcNamespace.PRIVATE
    assert settings.io_uring is IoUring.DENY
    defaults = parse_settings({}, {})
    assert defaults.ipc_namespace is IpcNamespace.AUTO
    assert defaults.io_uring is IoUring.ALLOW


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("checkpoint-ipc-namespace", "own"),
        ("checkpoint-io-uring", "off"),
        ("checkpoint-advanced-options", "--root=/"),
    ],
)
def test_bad_values_of_the_new_keys_are_refused(key: str, value: str) -> None:
    with pytest.raises(InvalidValueError, match=P + key):
        parse_settings({}, {P + key: value})


def test_a_container_variable_wins_over_the_pod_key() -> None:
    pod = parse_settings(
        {},
        {
            P + "checkpoint-advanced-options": "tcp-established",
            P + "checkpoint-files": "/var/log/app.log",
        },
    )
    mine = for_container(
        pod,
        {
            "MMC_CHECKPOINT_ADVANCED_OPTIONS": "--link-remap, --ghost-limit=10M",
            "MMC_CHECKPOINT_FILES": "/data/state,/tmp/x",
            "MMC_RESTORE_ADVANCED_OPTIONS": "skip-file-rwx-check",
            "PATH": "/bin",
        },
    )
    assert mine.checkpoint_options == ("link-remap", "ghost-limit=10M")
    assert mine.restore_options == ("skip-file-rwx-check",)
    assert mine.files == ("/data/state", "/tmp/x")
    assert mine.sources[Key.CHECKPOINT_ADVANCED_OPTIONS] is Source.CONTAINER_ENV
    assert any("MMC_CHECKPOINT_ADVANCED_OPTIONS wins" in w for w in mine.warnings)
    assert any("MMC_CHECKPOINT_FILES wins" in w for w in mine.warnings)
    # An empty variable is an empty list, and still wins (one container opts out).
    assert for_container(pod, {"MMC_CHECKPOINT_ADVANCED_OPTIONS": ""}).checkpoint_options == ()
    # No variable: the pod's settings unchanged.
    assert for_container(pod, {"PATH": "/bin"}) is pod


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MMC_CHECKPOINT_ADVANCED_OPTIONS", "--lazy-pages"),
        ("MMC_RESTORE_ADVANCED_OPTIONS", "inherit-fd=fd[1]:x"),
        ("MMC_CHECKPOINT_FILES", "relative/path"),
    ],
)
def test_a_bad_container_variable_is_refused_by_name(variable: str, value: str) -> None:
    with pytest.raises(InvalidValueError, match=f"^{variable}: invalid value"):
        for_container(parse_settings({}, {}), {variable: value})


def test_literal_env_of_a_container_spec() -> None:
    container = {
        "name": "app",
        "env": [
            {"name": "MMC_CHECKPOINT_FILES", "value": "/a"},
            {"name": "MMC_CHECKPOINT_ADVANCED_OPTIONS", "valueFrom": {"configMapKeyRef": {}}},
            {"name": "OTHER", "value": "x"},
        ],
    }
    literal, indirect = literal_env(container)
    assert literal == {"MMC_CHECKPOINT_FILES": "/a"}
    assert indirect == ["MMC_CHECKPOINT_ADVANCED_OPTIONS"]
    literal, indirect = literal_env({"envFrom": [{"configMapRef": {"name": "c"}}]})
    assert literal == {}
    assert set(indirect) == {
        "MMC_CHECKPOINT_FILES",
        "MMC_CHECKPOINT_ADVANCED_OPTIONS",
        "MMC_RESTORE_ADVANCED_OPTIONS",
    }
