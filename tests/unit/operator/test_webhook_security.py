"""What injection does to a container's security: the application's user, runAsNonRoot,
capabilities (added for the agent, taken from the application), seccomp, no_new_privs, Pod
Security levels, podckpt's reserved volumes and init containers."""

from __future__ import annotations

from typing import Any

import pytest

from podckpt.api import contract
from podckpt.operator.settings import OperatorSettings
from podckpt.operator.webhook.argv import ImageArgv
from podckpt.operator.webhook.decide import DeniedError, Mode, Namespace, Plan, Skip, plan
from podckpt.operator.webhook.inject import build_with_warnings

ON = {"memverge.ai/checkpoint-mode": "true"}
NS = Namespace("ns")


def _pod(make_pod: Any, security: dict[str, Any] | None = None, **pod_security: Any) -> Any:
    container: dict[str, Any] = {"name": "app", "image": "reg/app:1", "command": ["/app"]}
    if security is not None:
        container["securityContext"] = security
    pod = make_pod(name="db-0", owner="statefulset", labels=ON, containers=[container])
    if pod_security:
        pod["spec"]["securityContext"] = pod_security
    return pod


def _build(
    make_pod: Any,
    op: OperatorSettings,
    security: dict[str, Any] | None = None,
    image: ImageArgv | None = None,
    **pod_security: Any,
) -> tuple[dict[str, Any], contract.RunCommand, list[str]]:
    pod = _pod(make_pod, security, **pod_security)
    planned = plan(pod, NS, op)
    assert isinstance(planned, Plan)
    images = {"app": image} if image else {}
    new, warnings = build_with_warnings(pod, planned, images, op)
    app = new["spec"]["containers"][0]
    run = contract.parse_run_args(app["command"][2:] + app["args"], environ={})
    return new, run, warnings


def _added(new: dict[str, Any]) -> list[str]:
    added: list[str] = new["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
    return added


def test_without_run_as_user_the_user_probe_asks_the_runtime(
    make_pod: Any, op: OperatorSettings
) -> None:
    security = {"readOnlyRootFilesystem": False, "capabilities": {"add": ["NET_RAW"]}}
    new, run, _ = _build(make_pod, op, security)
    init = new["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["podckpt-bundle", "podckpt-user-0"]
    probe = init[1]
    assert probe["image"] == "reg/app:1", "the application's own image: its /etc/passwd"
    assert probe["command"] == [contract.AGENT_PATH, "whoami", "--out", "/.podckpt-user/app"]
    assert probe["securityContext"] == {
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "allowPrivilegeEscalation": False,
    }
    assert run.user_probe == "/.podckpt-user/app"
    assert run.user is None
    mounts = {m["name"]: m for m in new["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["podckpt-user"] == {
        "name": "podckpt-user",
        "mountPath": "/.podckpt-user",
        "readOnly": True,
    }
    # The image's USER may be anyone: the agent needs the user-dump set.
    assert {"SETUID", "SETGID", "DAC_OVERRIDE"} <= set(_added(new))


def test_explicit_root_needs_no_probe_and_no_user_dump(make_pod: Any, op: OperatorSettings) -> None:
    new, run, warnings = _build(make_pod, op, {"runAsUser": 0})
    assert [c["name"] for c in new["spec"]["initContainers"]] == ["podckpt-bundle"]
    assert run.user is None
    assert run.user_probe is None
    assert _added(new) == ["CHECKPOINT_RESTORE", "SETPCAP"]
    # SETPCAP is in every runtime's default set: the root application keeps it, as it would
    # have; CHECKPOINT_RESTORE is not, and is taken from the application.
    assert run.drop_capabilities == ("CAP_CHECKPOINT_RESTORE",)
    assert warnings == [
        "podckpt: container app: capabilities added for the agent (CHECKPOINT_RESTORE: CRIU"
        " restores PIDs (clone3 set_tid) and reads /proc/PID/map_files; SETPCAP: CRIU restores"
        " the tasks' capability sets); seccompProfile Unconfined instead of the node default"
        " (CRIU cannot dump a process under a seccomp filter); the agent runs as root; the"
        " application runs as root, without CHECKPOINT_RESTORE"
    ]


def test_pod_level_user_groups_and_fs_group_reach_the_agent(
    make_pod: Any, op: OperatorSettings
) -> None:
    _new, run, _ = _build(
        make_pod,
        op,
        None,
        runAsUser=1000,
        runAsGroup=2000,
        supplementalGroups=[3000],
        fsGroup=4000,
        supplementalGroupsPolicy="Strict",
    )
    assert run.user == "1000:2000"
    assert run.groups == (3000, 4000)
    assert run.strict_groups
    assert not run.non_root


def test_container_user_wins_over_the_pods(make_pod: Any, op: OperatorSettings) -> None:
    _new, run, warnings = _build(make_pod, op, {"runAsUser": 1001}, runAsUser=1000)
    assert run.user == "1001"
    assert "the application runs as uid 1001" in warnings[0]


def test_run_as_non_root_is_handed_to_the_agent(make_pod: Any, op: OperatorSettings) -> None:
    new, run, _ = _build(make_pod, op, {"runAsUser": 1000}, runAsNonRoot=True)
    assert run.non_root
    # The agent itself is root, so the container must allow it; the agent guarantees the rest.
    assert new["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] is False
    assert new["spec"]["securityContext"]["runAsNonRoot"] is True


def test_run_as_non_root_with_the_probe(make_pod: Any, op: OperatorSettings) -> None:
    image = ImageArgv((), (), "sha256:x", user="1001")
    new, run, _ = _build(make_pod, op, {"runAsNonRoot": True}, image=image)
    assert run.non_root
    assert run.user_probe
    probe = new["spec"]["initContainers"][1]
    assert probe["securityContext"]["runAsNonRoot"] is True, "the kubelet checks the image too"


@pytest.mark.parametrize(
    ("security", "image_user", "expected"),
    [
        ({"runAsNonRoot": True, "runAsUser": 0}, None, "runAsNonRoot is true but runAsUser is 0"),
        ({"runAsNonRoot": True}, "", "runs as root (USER unset"),
        ({"runAsNonRoot": True}, "root", "runs as root (USER root"),
        ({"runAsNonRoot": True}, "0:0", "runs as root"),
        ({"runAsNonRoot": True}, "app", "names its USER 'app'"),
    ],
)
def test_run_as_non_root_that_cannot_hold_is_denied_naming_the_field(
    make_pod: Any,
    op: OperatorSettings,
    security: dict[str, Any],
    image_user: str | None,
    expected: str,
) -> None:
    pod = _pod(make_pod, security)
    planned = plan(pod, NS, op)
    assert isinstance(planned, Plan)
    images = {} if image_user is None else {"app": ImageArgv((), (), "sha256:x", image_user)}
    with pytest.raises(DeniedError) as info:
        build_with_warnings(pod, planned, images, op)
    message = str(info.value)
    assert "spec.containers[app].securityContext.runAsNonRoot" in message
    assert expected in message
    assert "set " in message


def test_no_net_admin_unless_asked(make_pod: Any, op: OperatorSettings) -> None:
    for security in (None, {"runAsUser": 0}, {"runAsUser": 1000}):
        new, _, _ = _build(make_pod, op, security)
        assert "NET_ADMIN" not in _added(new)
    assert "NET_ADMIN" not in op.agent_capabilities


def test_users_own_capabilities_are_kept_and_not_reported(
    make_pod: Any, op: OperatorSettings
) -> None:
    security = {
        "runAsUser": 0,
        "capabilities": {"add": ["CHECKPOINT_RESTORE"], "drop": ["SETPCAP", "NET_RAW"]},
    }
    new, run, warnings = _build(make_pod, op, security)
    caps = new["spec"]["containers"][0]["securityContext"]["capabilities"]
    assert caps == {"add": ["CHECKPOINT_RESTORE", "SETPCAP"], "drop": ["NET_RAW"]}
    # The user dropped SETPCAP: the agent gets it back, the application does not.
    assert run.drop_capabilities == ("CAP_SETPCAP",)
    assert "SETPCAP: CRIU restores" in warnings[0]
    assert "CHECKPOINT_RESTORE:" not in warnings[0], "the user added it, not podckpt"


def test_no_new_privs_except_where_kubernetes_or_the_user_says_otherwise(
    make_pod: Any, op: OperatorSettings
) -> None:
    def ape(security: dict[str, Any]) -> object:
        new, _, _ = _build(make_pod, op, security)
        return new["spec"]["containers"][0]["securityContext"].get("allowPrivilegeEscalation")

    assert ape({"runAsUser": 0}) is False
    assert ape({"runAsUser": 0, "allowPrivilegeEscalation": True}) is True
    assert ape({"runAsUser": 0, "privileged": True}) is None
    assert ape({"runAsUser": 0, "capabilities": {"add": ["SYS_ADMIN"]}}) is None


def test_seccomp_warning_names_the_profile_it_replaced(make_pod: Any, op: OperatorSettings) -> None:
    new, _, warnings = _build(
        make_pod, op, {"runAsUser": 0}, seccompProfile={"type": "RuntimeDefault"}
    )
    assert new["spec"]["containers"][0]["securityContext"]["seccompProfile"] == {
        "type": "Unconfined"
    }
    assert "seccompProfile Unconfined instead of RuntimeDefault" in warnings[0]


def test_each_agent_sees_only_its_own_run_directory(make_pod: Any, op: OperatorSettings) -> None:
    containers = [
        {"name": n, "image": "reg/app:1", "command": ["/app"], "securityContext": {"runAsUser": 0}}
        for n in ("a", "b")
    ]
    pod = make_pod(name="db-0", owner="statefulset", labels=ON, containers=containers)
    planned = plan(pod, NS, op)
    assert isinstance(planned, Plan)
    new, _ = build_with_warnings(pod, planned, {}, op)
    for container in new["spec"]["containers"]:
        run_mounts = [m for m in container["volumeMounts"] if m["name"] == "podckpt-run"]
        assert run_mounts == [
            {"name": "podckpt-run", "mountPath": contract.RUN_MOUNT, "subPath": container["name"]}
        ]


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_pod_security_level_is_a_clear_denial(
    make_pod: Any, op: OperatorSettings, level: str
) -> None:
    ns = Namespace("team", labels={"pod-security.kubernetes.io/enforce": level})
    with pytest.raises(DeniedError) as info:
        plan(_pod(make_pod), ns, op)
    message = str(info.value)
    assert f"enforces the Pod Security level {level!r}" in message
    assert "pod-security.kubernetes.io/enforce=privileged" in message


def test_pod_security_level_skips_dormant_injection(make_pod: Any, op: OperatorSettings) -> None:
    labels = {
        "pod-security.kubernetes.io/enforce": "baseline",
        "memverge.ai/checkpoint-injection": "enabled",
    }
    pod = make_pod(name="db-0", owner="statefulset")
    result = plan(pod, Namespace("team", labels=labels), op)
    assert isinstance(result, Skip)
    assert any("Pod Security level 'baseline'" in w for w in result.warnings)
    privileged = Namespace(
        "team", labels={**labels, "pod-security.kubernetes.io/enforce": "privileged"}
    )
    injected = plan(pod, privileged, op)
    assert isinstance(injected, Plan)
    assert injected.mode is Mode.DORMANT


@pytest.mark.parametrize(
    ("field", "container", "expected"),
    [
        (
            "containers",
            {
                "name": "spy",
                "image": "x",
                "volumeMounts": [{"name": "podckpt-store", "mountPath": "/s"}],
            },
            "container 'spy' mounts 'podckpt-store'",
        ),
        (
            "initContainers",
            {
                "name": "x",
                "image": "x",
                "volumeMounts": [{"name": "podckpt-run", "mountPath": "/r"}],
            },
            "container 'x' mounts 'podckpt-run'",
        ),
        ("initContainers", {"name": "podckpt-user-0", "image": "x"}, "reserved for podckpt"),
    ],
)
def test_podckpt_volumes_and_init_containers_are_reserved(
    make_pod: Any, op: OperatorSettings, field: str, container: dict[str, Any], expected: str
) -> None:
    pod = _pod(make_pod)
    pod["spec"].setdefault(field, []).append(container)
    with pytest.raises(DeniedError, match=expected):
        plan(pod, NS, op)


def test_podckpt_keys_on_a_pod_that_was_not_injected_are_denied(
    make_pod: Any, op: OperatorSettings
) -> None:
    pod = _pod(make_pod)
    pod["metadata"]["annotations"] = {"podckpt.io/claim": "data-postgres-0"}
    with pytest.raises(DeniedError, match=r"podckpt\.io/claim: podckpt\.io/\* labels"):
        plan(pod, NS, op)
