"""Admission of what a container asks of CRIU: MMC_* variables, advanced options, the IPC
namespace and io_uring keys, and exactly the capabilities (and warnings) they cost."""

from __future__ import annotations

from typing import Any

import pytest

from podckpt.api import contract
from podckpt.operator.settings import OperatorSettings
from podckpt.operator.webhook.decide import DeniedError, Namespace, Plan, plan
from podckpt.operator.webhook.inject import build

ON = {"memverge.ai/checkpoint-mode": "true"}
NS = Namespace("ns")


def _container(name: str = "app", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "registry.example/app:1",
        "command": ["/app"],
        "resources": {"limits": {"memory": "1Gi"}},
        **extra,
    }


def _built(
    make_pod: Any, op: OperatorSettings, containers: list[dict[str, Any]], **annotations: str
) -> tuple[Plan, dict[str, dict[str, Any]]]:
    pod = make_pod(
        name="db-0",
        owner="statefulset",
        labels=ON,
        annotations={f"memverge.ai/{k.replace('_', '-')}": v for k, v in annotations.items()},
        containers=containers,
    )
    result = plan(pod, NS, op)
    assert isinstance(result, Plan), result
    new = build(pod, result, {}, op)
    return result, {c["name"]: c for c in new["spec"]["containers"]}


def _caps(container: dict[str, Any]) -> set[str]:
    return set(container["securityContext"]["capabilities"]["add"])


#: Without runAsUser the image's USER decides, which may be anyone: the agent also gets the set
#: it dumps a non-root application with (webhook/security.py).
USER_DUMP = {"SETUID", "SETGID", "DAC_OVERRIDE"}


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_defaults_add_no_capability_and_no_hand_over(make_pod: Any, op: OperatorSettings) -> None:
    result, containers = _built(make_pod, op, [_container()])
    assert _caps(containers["app"]) == {*op.agent_capabilities, *USER_DUMP}
    env = _env(containers["app"])
    assert contract.Env.IPC_NAMESPACE not in env
    assert contract.Env.IO_URING not in env
    assert not any("adds capability" in w for w in result.warnings)


def test_tcp_established_adds_net_admin_to_the_container_that_asked(
    make_pod: Any, op: OperatorSettings
) -> None:
    asking = _container(
        "web", env=[{"name": "MMC_CHECKPOINT_ADVANCED_OPTIONS", "value": "--tcp-established"}]
    )
    result, containers = _built(make_pod, op, [asking, _container("worker")])
    assert "NET_ADMIN" in _caps(containers["web"])
    assert "NET_ADMIN" not in _caps(containers["worker"])
    assert any("'web': CRIU option tcp-established adds capability NET_ADMIN" in w
               for w in result.warnings)  # fmt: skip
    # The variable stays the application's: it is the user's own container spec.
    assert _env(containers["web"])["MMC_CHECKPOINT_ADVANCED_OPTIONS"] == "--tcp-established"


def test_a_container_variable_wins_over_the_pod_key(make_pod: Any, op: OperatorSettings) -> None:
    opted_out = _container("web", env=[{"name": "MMC_CHECKPOINT_ADVANCED_OPTIONS", "value": ""}])
    result, containers = _built(
        make_pod,
        op,
        [opted_out, _container("worker")],
        checkpoint_advanced_options="tcp-established",
    )
    assert "NET_ADMIN" not in _caps(containers["web"])
    assert "NET_ADMIN" in _caps(containers["worker"])
    assert any(
        "'web'" in w and "MMC_CHECKPOINT_ADVANCED_OPTIONS wins" in w for w in result.warnings
    )


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("MMC_CHECKPOINT_ADVANCED_OPTIONS", "--external=mnt[]", "'external' is not an allowed"),
        ("MMC_RESTORE_ADVANCED_OPTIONS", "--lazy-pages", "'lazy-pages' is not an allowed"),
        ("MMC_CHECKPOINT_FILES", "relative", "absolute paths"),
    ],
)
def test_a_refused_container_variable_denies_the_pod_naming_it(
    make_pod: Any, op: OperatorSettings, variable: str, value: str, named: str
) -> None:
    bad = _container("web", env=[{"name": variable, "value": value}])
    pod = make_pod(name="db-0", owner="statefulset", labels=ON, containers=[bad])
    with pytest.raises(DeniedError) as info:
        plan(pod, NS, op)
    message = str(info.value)
    assert message.startswith(f"container 'web': {variable}: invalid value")
    assert named in message
    if "allowed CRIU" in named or "is not an allowed" in named:
        assert "tcp-established, tcp-close, skip-in-flight, link-remap" in message


def test_a_refused_pod_option_denies_naming_the_key(make_pod: Any, op: OperatorSettings) -> None:
    pod = make_pod(
        name="db-0",
        owner="statefulset",
        labels={**ON, "memverge.ai/checkpoint-advanced-options": "leave-running"},
    )
    with pytest.raises(DeniedError, match=r"memverge\.ai/checkpoint-advanced-options: invalid"):
        plan(pod, NS, op)


def test_a_variable_from_a_config_map_is_left_to_the_agent_with_a_warning(
    make_pod: Any, op: OperatorSettings
) -> None:
    indirect = _container(
        "web",
        env=[{"name": "MMC_CHECKPOINT_ADVANCED_OPTIONS", "valueFrom": {"configMapKeyRef": {}}}],
    )
    result, _ = _built(make_pod, op, [indirect])
    assert any("the agent checks it at start" in w for w in result.warnings)


def test_private_ipc_namespace_adds_sys_admin_and_hands_it_over(
    make_pod: Any, op: OperatorSettings
) -> None:
    result, containers = _built(
        make_pod, op, [_container(), _container("side")], checkpoint_ipc_namespace="private"
    )
    for name in ("app", "side"):
        assert "SYS_ADMIN" in _caps(containers[name])
        assert _env(containers[name])[contract.Env.IPC_NAMESPACE] == "private"
    assert any("IPC namespace of its own" in w and "SYS_ADMIN" in w for w in result.warnings)


def test_io_uring_deny_adds_sys_admin_and_hands_it_over(
    make_pod: Any, op: OperatorSettings
) -> None:
    result, containers = _built(
        make_pod, op, [_container(), _container("side")], checkpoint_io_uring="deny"
    )
    assert "SYS_ADMIN" in _caps(containers["app"])
    assert _env(containers["app"])[contract.Env.IO_URING] == "deny"
    # Two containers: `auto` does not give an own IPC namespace (the other could share it).
    assert contract.Env.IPC_NAMESPACE not in _env(containers["app"])
    assert any("io_uring_setup fails with ENOSYS" in w for w in result.warnings)


@pytest.mark.parametrize(
    ("containers", "annotations", "private"),
    [
        # alone, and CAP_SYS_ADMIN is there anyway (io_uring deny): own namespace for free
        ([_container()], {"checkpoint_io_uring": "deny"}, True),
        # alone, and the user gave it SYS_ADMIN already
        (
            [_container(securityContext={"capabilities": {"add": ["SYS_ADMIN"]}})],
            {},
            True,
        ),
        # alone, without SYS_ADMIN: auto does not add a privilege
        ([_container()], {}, False),
        # not alone: another container might share its System V objects
        (
            [_container(securityContext={"privileged": True}), _container("side")],
            {},
            False,
        ),
        # `pod` wins even when free
        ([_container()], {"checkpoint_io_uring": "deny", "checkpoint_ipc_namespace": "pod"}, False),
    ],
)
def test_auto_ipc_namespace_only_where_it_costs_nothing(
    make_pod: Any,
    op: OperatorSettings,
    containers: list[dict[str, Any]],
    annotations: dict[str, str],
    private: bool,
) -> None:
    _, built = _built(make_pod, op, containers, **annotations)
    env = _env(built["app"])
    assert (env.get(contract.Env.IPC_NAMESPACE) == "private") is private
    if not private and "checkpoint_io_uring" not in annotations:
        assert "SYS_ADMIN" not in _caps(built["app"]) or containers[0].get("securityContext")


def test_link_remap_adds_dac_read_search(make_pod: Any, op: OperatorSettings) -> None:
    result, containers = _built(
        make_pod, op, [_container()], checkpoint_advanced_options="link-remap"
    )
    assert _caps(containers["app"]) == {*op.agent_capabilities, *USER_DUMP, "DAC_READ_SEARCH"}
    assert any("link-remap adds capability DAC_READ_SEARCH" in w for w in result.warnings)
