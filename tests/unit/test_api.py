"""The key API: every key, valid and invalid, precedence, separators and the downward-API file."""

from __future__ import annotations

from pathlib import Path

import pytest

from podckpt.api import (
    CheckpointSettings,
    DownwardAPIFormatError,
    InvalidValueError,
    Key,
    RestoreMode,
    RestorePolicy,
    Source,
    format_downward_text,
    injection_enabled,
    parse_downward_text,
    parse_quantity,
    parse_settings,
    qualified,
    read_downward_file,
)

P = "memverge.ai/"


def test_defaults_when_no_key_is_given() -> None:
    settings = parse_settings({}, {})
    assert settings == CheckpointSettings()
    assert settings.mode is False
    assert settings.keep == 2
    assert settings.restore_policy is RestorePolicy.LATEST
    assert settings.warnings == ()


def test_user_guide_example_job_template() -> None:
    settings = parse_settings(
        {P + "checkpoint-mode": "true"}, {P + "checkpoint-volume-size": "2Gi"}
    )
    assert settings.mode is True
    assert settings.volume_size == 2 * 2**30
    assert settings.sources[Key.CHECKPOINT_MODE] is Source.POD_LABEL
    assert settings.sources[Key.CHECKPOINT_VOLUME_SIZE] is Source.POD_ANNOTATION


@pytest.mark.parametrize(
    ("key", "value", "field", "expected"),
    [
        ("checkpoint-mode", "true", "mode", True),
        ("checkpoint-mode", "False", "mode", False),
        ("checkpoint-containers", "app,worker", "containers", ("app", "worker")),
        ("checkpoint-storage-volume", "ckpt-vol", "storage_volume", "ckpt-vol"),
        ("checkpoint-storage-class", "fast.ssd-1", "storage_class", "fast.ssd-1"),
        ("checkpoint-volume-size", "512Mi", "volume_size", 512 * 2**20),
        ("checkpoint-volume-size", "10G", "volume_size", 10 * 10**9),
        ("checkpoint-volume-size", "1.5Gi", "volume_size", 3 * 2**29),
        ("checkpoint-volume-size", "1e9", "volume_size", 10**9),
        (
            "checkpoint-files",
            "/var/log/app.log, /etc/app/",
            "files",
            ("/var/log/app.log", "/etc/app/"),
        ),
        ("irmap-scan-paths", "/data,/cfg", "irmap_scan_paths", ("/data", "/cfg")),
        ("checkpoint-diagnosis", "true", "diagnosis", True),
        ("checkpoint-interval", "1h30m", "interval", 5400.0),
        ("checkpoint-interval", "45", "interval", 45.0),
        ("checkpoint-keep", "5", "keep", 5),
        ("restore-policy", "strict", "restore_policy", RestorePolicy.STRICT),
        ("restore-policy", "Fresh", "restore_policy", RestorePolicy.FRESH),
        ("restore-mode", "lazy", "restore_mode", RestoreMode.LAZY),
        ("restore-mode", "Full", "restore_mode", RestoreMode.FULL),
    ],
)
def test_each_key_valid_as_annotation(key: str, value: str, field: str, expected: object) -> None:
    settings = parse_settings({}, {P + key: value})
    assert getattr(settings, field) == expected


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("checkpoint-mode", "yes please", "true or false"),
        ("checkpoint-containers", "App_1", "container names"),
        ("checkpoint-containers", ",", "container names"),
        ("checkpoint-storage-volume", "Not A Volume", "volume"),
        ("checkpoint-storage-class", "bad/class", "StorageClass"),
        ("checkpoint-volume-size", "2GG", "quantity"),
        ("checkpoint-volume-size", "0", "greater than zero"),
        ("checkpoint-volume-size", "-1Gi", "quantity"),
        ("checkpoint-volume-size", "100m", "quantity"),
        ("checkpoint-files", "relative/path", "absolute paths"),
        ("checkpoint-files", "/a/../etc/shadow", "absolute paths"),
        ("irmap-scan-paths", "", "absolute paths"),
        ("checkpoint-diagnosis", "1", "true or false"),
        ("checkpoint-interval", "5s", "minimum 10s"),
        ("checkpoint-interval", "10 minutes", "duration"),
        ("checkpoint-interval", "nan", "duration"),
        ("checkpoint-keep", "0", "from 1 to 100"),
        ("checkpoint-keep", "two", "from 1 to 100"),
        ("restore-policy", "newest", "latest | fresh | strict"),
        ("restore-mode", "eager", "lazy | full"),
    ],
)
def test_each_key_invalid_names_key_value_and_allowed(key: str, value: str, allowed: str) -> None:
    with pytest.raises(InvalidValueError) as caught:
        parse_settings({}, {P + key: value})
    error = caught.value
    assert error.key == P + key
    assert error.value == value
    message = str(error)
    assert message.startswith(P + key + ": invalid value " + repr(value))
    assert allowed in message


def test_annotation_wins_over_label_with_a_warning() -> None:
    settings = parse_settings({P + "checkpoint-keep": "3"}, {P + "checkpoint-keep": "4"})
    assert settings.keep == 4
    assert settings.sources[Key.CHECKPOINT_KEEP] is Source.POD_ANNOTATION
    assert len(settings.warnings) == 1
    assert "pod label value '3' is ignored" in settings.warnings[0]


def test_same_value_in_label_and_annotation_is_not_a_warning() -> None:
    settings = parse_settings({P + "checkpoint-mode": "true"}, {P + "checkpoint-mode": "true"})
    assert settings.warnings == ()


def test_containers_label_uses_dot_separator() -> None:
    settings = parse_settings({P + "checkpoint-containers": "app.worker"}, {})
    assert settings.containers == ("app", "worker")


def test_paths_cannot_come_from_a_label_value() -> None:
    # A label value cannot hold '/', so whatever a label carries is not an absolute path.
    with pytest.raises(InvalidValueError, match="given as an annotation"):
        parse_settings({P + "checkpoint-files": "var.log"}, {})


def test_pod_keys_beat_namespace_defaults_silently() -> None:
    settings = parse_settings(
        {P + "checkpoint-mode": "false"},
        {},
        namespace_labels={P + "checkpoint-mode": "true", P + "checkpoint-keep": "7"},
    )
    assert settings.mode is False
    assert settings.keep == 7
    assert settings.sources[Key.CHECKPOINT_KEEP] is Source.NAMESPACE_LABEL
    assert settings.warnings == ()


def test_namespace_default_turns_checkpointing_on() -> None:
    settings = parse_settings({}, {}, namespace_annotations={P + "checkpoint-mode": "true"})
    assert settings.mode is True
    assert settings.sources[Key.CHECKPOINT_MODE] is Source.NAMESPACE_ANNOTATION


def test_storage_volume_makes_class_and_size_ignored_with_warnings() -> None:
    settings = parse_settings(
        {},
        {
            P + "checkpoint-storage-volume": "ckpt",
            P + "checkpoint-storage-class": "fast",
            P + "checkpoint-volume-size": "1Gi",
        },
    )
    assert settings.storage_volume == "ckpt"
    assert len(settings.warnings) == 2
    assert all(
        "ignored because memverge.ai/checkpoint-storage-volume" in w for w in settings.warnings
    )


def test_selected_containers_default_excludes_proxies() -> None:
    settings = parse_settings({P + "checkpoint-mode": "true"}, {})
    names = ["app", "istio-proxy", "worker", "nginx-proxy"]
    assert settings.selected_containers(names) == ("app", "worker")


def test_selected_containers_explicit_keeps_pod_order_and_may_name_a_proxy() -> None:
    settings = parse_settings({}, {P + "checkpoint-containers": "istio-proxy,app"})
    assert settings.selected_containers(["app", "istio-proxy"]) == ("app", "istio-proxy")


def test_selected_containers_unknown_name_is_an_error_listing_the_pod_containers() -> None:
    settings = parse_settings({}, {P + "checkpoint-containers": "app,ghost"})
    with pytest.raises(InvalidValueError) as caught:
        settings.selected_containers(["app", "sidecar"])
    assert caught.value.key == P + "checkpoint-containers"
    assert "app, sidecar" in str(caught.value)


def test_prefix_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODCKPT_KEY_PREFIX", "example.com")
    assert qualified(Key.CHECKPOINT_MODE) == "example.com/checkpoint-mode"
    settings = parse_settings({"example.com/checkpoint-mode": "true", P + "checkpoint-keep": "x"})
    assert settings.mode is True  # the memverge.ai key is not ours under another prefix
    assert settings.keep == 2


def test_injection_enabled() -> None:
    assert injection_enabled({P + "checkpoint-injection": "enabled"}) is True
    assert injection_enabled({P + "checkpoint-injection": "disabled"}) is False
    assert injection_enabled({}) is False
    with pytest.raises(InvalidValueError, match=r"enabled \| disabled"):
        injection_enabled({P + "checkpoint-injection": "on"})


def test_parse_quantity_rounds_up_to_whole_bytes() -> None:
    assert parse_quantity("k", "1.0001k") == 1001
    assert parse_quantity("k", ".5Ki") == 512


def test_settings_are_frozen() -> None:
    settings = parse_settings({P + "checkpoint-mode": "true"})
    with pytest.raises(AttributeError):
        settings.mode = False  # type: ignore[misc]


# The downward-API file, as the kubelet writes it.


def test_downward_file_round_trip(tmp_path: Path) -> None:
    entries = {
        P + "checkpoint-mode": "true",
        P + "checkpoint-files": "/var/log/a.log,/tmp/x",
        "app": 'quote " and backslash \\ and newline\n',
    }
    path = tmp_path / "annotations"
    path.write_text(format_downward_text(entries))
    assert read_downward_file(path) == entries


def test_downward_file_go_escapes() -> None:
    text = 'a="tab\\there"\nb="\\u00e9t\\xc3\\xa9"\nc="\\101"\n'
    assert parse_downward_text(text) == {"a": "tab\there", "b": "été", "c": "A"}


@pytest.mark.parametrize("line", ["novalue", 'k="unterminated', 'k="bad \\q escape"', "k=bare"])
def test_downward_file_malformed_line_names_file_and_line(line: str) -> None:
    with pytest.raises(DownwardAPIFormatError, match=r"^labels:2: "):
        parse_downward_text('ok="1"\n' + line + "\n", "labels")


def test_unknown_keys_are_warnings_with_the_nearest_key() -> None:
    settings = parse_settings(
        {"memverge.ai/checkpoint-mode": "true", "memverge.ai/checkpoint-injection": "enabled"},
        {"memverge.ai/checkpoint-volume-sise": "1Gi", "memverge.ai/frobnicate": "1"},
        namespace_labels={
            "memverge.ai/checkpoint-injection": "enabled",
            "memverge.ai/checkpiont-interval": "1m",
        },
    )
    assert settings.volume_size is None  # ignored, not guessed
    assert settings.warnings == (
        "memverge.ai/checkpoint-volume-sise: unknown key (pod annotation), ignored;"
        " did you mean memverge.ai/checkpoint-volume-size?",
        "memverge.ai/frobnicate: unknown key (pod annotation), ignored",
        "memverge.ai/checkpoint-injection: unknown key (pod label), ignored; it is a namespace"
        " key: put it on the Namespace",
        "memverge.ai/checkpiont-interval: unknown key (namespace label), ignored;"
        " did you mean memverge.ai/checkpoint-interval?",
    )
    # other domains are none of our business
    assert (
        parse_settings({"app.kubernetes.io/name": "x"}, {"example.com/checkpoint": "1"}).warnings
        == ()
    )
