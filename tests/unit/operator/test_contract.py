"""The webhook <-> agent contract (`podckpt.api.contract`): what the webhook writes is exactly
what the agent parses, and nothing of ours reaches the application."""

from __future__ import annotations

import os
from typing import Any

import pytest

from podckpt.agent import cli, pids, runner
from podckpt.agent.appstart import application_env
from podckpt.agent.settings import LiveSettings
from podckpt.api import contract
from podckpt.operator.settings import OperatorSettings
from podckpt.operator.webhook.argv import ImageArgv
from podckpt.operator.webhook.decide import Namespace, Plan, plan
from podckpt.operator.webhook.inject import build

ON = {"memverge.ai/checkpoint-mode": "true"}


def _injected(pod: dict[str, Any]) -> dict[str, Any]:
    op = OperatorSettings()
    planned = plan(pod, Namespace("ns"), op)
    assert isinstance(planned, Plan)
    images = {name: ImageArgv(("/entry",), (), "sha256:x") for name in planned.images}
    return build(pod, planned, images, op)


def _agent_parse(container: dict[str, Any]) -> contract.RunCommand:
    """Parse the container's command line with the agent's own parser."""
    command, args = container["command"], container["args"]
    assert command[0] == contract.AGENT_PATH
    parsed = runner.build_parser().parse_args([*command[1:], *args])
    return contract.run_command_from(parsed)


@pytest.mark.parametrize("kind", ["statefulset", "plain-pod-generated-name-non-root"])
def test_the_agent_parses_what_the_webhook_writes(make_pod: Any, kind: str) -> None:
    if kind == "statefulset":
        pod = make_pod(name="db-0", owner="statefulset", labels=ON)
    else:
        pod = make_pod(
            name=None,
            labels={**ON, "memverge.ai/checkpoint-storage-volume": "ckpt"},
            volumes=[{"name": "ckpt", "persistentVolumeClaim": {"claimName": "mine"}}],
            containers=[
                {"name": "app", "image": "r/app:1", "securityContext": {"runAsUser": 1000}}
            ],
        )
    container = _injected(pod)["spec"]["containers"][0]
    run = _agent_parse(container)
    assert run.container == container["name"]
    assert run.store is not None
    assert run.store.startswith(contract.STORE_MOUNT + "/")
    assert (run.labels_file, run.annotations_file) == (
        contract.LABELS_FILE,
        contract.ANNOTATIONS_FILE,
    )
    assert list(run.argv) == container["args"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {contract.BUNDLE_MOUNT, contract.META_MOUNT, contract.STORE_MOUNT} <= mounts


def test_every_variable_the_webhook_injects_is_the_agents_and_never_the_applications(
    make_pod: Any,
) -> None:
    pod = make_pod(
        name=None,
        labels={**ON, "memverge.ai/checkpoint-storage-volume": "ckpt"},
        volumes=[{"name": "ckpt", "persistentVolumeClaim": {"claimName": "mine"}}],
        containers=[
            {
                "name": "app",
                "image": "r/app:1",
                "command": ["/app"],
                "env": [{"name": "APP", "value": "1"}],
                "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
            }
        ],
    )
    container = _injected(pod)["spec"]["containers"][0]
    injected = {e["name"] for e in container["env"]} - {"APP"}
    assert injected, "the webhook hands the agent image, user and pod name"
    assert injected <= contract.AGENT_ENV, injected - contract.AGENT_ENV
    environ = {e["name"]: e.get("value", "x") for e in container["env"]}
    assert contract.application_environment(environ) == {"APP": "1"}


def test_a_statefulset_pod_gets_no_pod_name_variable(make_pod: Any) -> None:
    """The pod name is only for the kubelet's $(VAR) expansion of a generated name."""
    container = _injected(make_pod(name="db-0", owner="statefulset", labels=ON))["spec"][
        "containers"
    ][0]
    assert contract.Env.POD_NAME not in {e["name"] for e in container.get("env") or ()}


def test_run_command_round_trip() -> None:
    run = contract.RunCommand(
        argv=("/bin/app", "--flag", "--", "x"),
        store="/s/id/app",
        container="app",
        labels_file="/m/labels",
        annotations_file=None,
    )
    assert contract.parse_run_args(run.agent_args()[1:], environ={}) == run
    command, args = run.container_command()
    assert command[-1] == "--"
    assert args == ["/bin/app", "--flag", "--", "x"]


def test_option_defaults_come_from_the_agents_environment() -> None:
    run = contract.parse_run_args(
        ["--", "/app"], environ={contract.Env.STORE: "/s", contract.Env.CONTAINER: "c"}
    )
    assert (run.store, run.container, run.argv) == ("/s", "c", ("/app",))


def test_names_spelled_before_the_api_is_imported_agree_with_the_contract(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """pids.py and cli.surely_fresh run before `podckpt.api` is imported (fresh-start speed)."""
    assert pids.BUNDLE_ENV == contract.Env.BUNDLE
    store = tmp_path / "store"
    store.mkdir()
    (store / "LATEST").write_text("g")
    monkeypatch.delenv(contract.Env.STORE, raising=False)
    args = ["run", contract.STORE_OPTION, str(store), "--", "/app"]
    assert cli.store_of(args) == str(store)
    assert not cli.surely_fresh(args, cli.store_of(args))
    monkeypatch.setenv(contract.Env.STORE, str(store))
    assert cli.store_of(["run", "--", "/app"]) == str(store)
    assert not cli.surely_fresh(["run", "--", "/app"], str(store))
    assert os.environ[contract.Env.STORE] == str(store)


def test_the_application_environment_is_free_of_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in contract.Env:
        monkeypatch.setenv(name, "x")
    assert not [n for n in application_env() if n.startswith("PODCKPT_")]


def _kubelet_expansion(words: list[str]) -> list[str]:
    """What the kubelet does to `command`/`args` without variables: `$$` becomes `$`."""
    return [w.replace("$$", "$") for w in words]


def test_namespace_keys_reach_the_agents_settings(make_pod: Any) -> None:
    namespace = Namespace(
        "ns",
        labels={
            "memverge.ai/checkpoint-mode": "true",
            "memverge.ai/checkpoint-interval": "10m",
            "kubernetes.io/metadata.name": "ns",
        },
        annotations={
            "memverge.ai/checkpoint-files": "/var/lib/$(HOME)/x,/tmp/cache",
            "other.example/note": "not ours",
        },
    )
    op = OperatorSettings()
    pod = make_pod(name="db-0", owner="statefulset")
    planned = plan(pod, namespace, op)
    assert isinstance(planned, Plan)
    container = build(pod, planned, {}, op)["spec"]["containers"][0]
    command = _kubelet_expansion(container["command"])
    run = runner.build_parser().parse_args([*command[1:], *container["args"]])
    text = contract.run_command_from(run).namespace_defaults
    assert text is not None
    labels, annotations = contract.parse_namespace_defaults(text)
    # only the keys: other metadata of the namespace does not go into every pod's command
    assert labels == {
        "memverge.ai/checkpoint-mode": "true",
        "memverge.ai/checkpoint-interval": "10m",
    }
    assert annotations == {"memverge.ai/checkpoint-files": "/var/lib/$(HOME)/x,/tmp/cache"}
    # the agent's settings, with no label or annotation of the pod itself
    live = LiveSettings(None, None, labels, annotations)
    settings = live.read()
    assert settings.mode is True
    assert settings.interval == 600
    assert settings.files == ("/var/lib/$(HOME)/x", "/tmp/cache")


def test_a_pod_without_namespace_keys_gets_no_option(make_pod: Any) -> None:
    container = _injected(make_pod(name="db-0", owner="statefulset", labels=ON))["spec"][
        "containers"
    ][0]
    assert contract.NAMESPACE_DEFAULTS_OPTION not in container["command"]


@pytest.mark.parametrize(
    "text",
    ["{", "[]", '{"labels": {"a": 1}}', '{"annotations": "x"}'],
)
def test_bad_namespace_defaults_name_the_option(text: str) -> None:
    with pytest.raises(ValueError, match="--namespace-defaults"):
        contract.parse_namespace_defaults(text)


def test_the_key_prefix_reaches_the_agent(make_pod: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(contract.Env.KEY_PREFIX, "ckpt.example.com/")
    pod = make_pod(
        name="db-0", owner="statefulset", labels={"ckpt.example.com/checkpoint-mode": "true"}
    )
    container = _injected(pod)["spec"]["containers"][0]
    assert {"name": contract.Env.KEY_PREFIX, "value": "ckpt.example.com/"} in container["env"]
    monkeypatch.delenv(contract.Env.KEY_PREFIX)
    default = _injected(make_pod(name="db-0", owner="statefulset", labels=ON))
    assert contract.Env.KEY_PREFIX not in {
        e["name"] for e in default["spec"]["containers"][0]["env"]
    }
