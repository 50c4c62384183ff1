"""The admission pipeline: who is injected, what is denied, and what the pod becomes."""

from __future__ import annotations

from typing import Any

import jsonpatch
import pytest

from podckpt.api import contract
from podckpt.operator.domain.revision import revision
from podckpt.operator.domain.slots import SlotChoice
from podckpt.operator.settings import OperatorSettings
from podckpt.operator.webhook.argv import ImageArgv
from podckpt.operator.webhook.decide import DeniedError, Mode, Namespace, Plan, Skip, plan
from podckpt.operator.webhook.inject import build, make_patch

ON = {"memverge.ai/checkpoint-mode": "true"}
NS = Namespace("ns")
STORE_VOL = [{"name": "ckpt", "persistentVolumeClaim": {"claimName": "mine"}}]


def planned(pod: dict[str, Any], op: OperatorSettings, ns: Namespace = NS) -> Plan:
    result = plan(pod, ns, op)
    assert isinstance(result, Plan), result
    return result


def test_pod_without_the_label_is_left_alone(make_pod: Any, op: OperatorSettings) -> None:
    result = plan(make_pod(owner="statefulset", name="db-0"), NS, op)
    assert isinstance(result, Skip)


@pytest.mark.parametrize("namespace", ["kube-system", "podckpt-system"])
def test_system_and_own_namespaces_are_never_injected(
    make_pod: Any, op: OperatorSettings, namespace: str
) -> None:
    pod = make_pod(name="db-0", owner="statefulset", labels=ON)
    assert isinstance(plan(pod, Namespace(namespace, labels=ON), op), Skip)


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("checkpoint-mode", "yes please", "true or false"),
        ("checkpoint-volume-size", "2GG", "quantity"),
        ("checkpoint-containers", "app,ghost", "names of containers of this pod: app"),
        ("checkpoint-storage-volume", "nope", "the name of a volume of this pod: ckpt"),
        ("checkpoint-storage-class", "Bad_Class", "StorageClass"),
        ("checkpoint-files", "relative/path", "absolute paths"),
        ("irmap-scan-paths", "x", "absolute paths"),
        ("checkpoint-diagnosis", "maybe", "true or false"),
        ("checkpoint-interval", "1s", "duration"),
        ("checkpoint-keep", "0", "whole number"),
        ("restore-policy", "newest", "latest | fresh | strict"),
    ],
)
def test_bad_values_are_denied_naming_the_key(
    make_pod: Any, op: OperatorSettings, key: str, value: str, allowed: str
) -> None:
    annotations = {f"memverge.ai/{key}": value}
    labels = ON if key != "checkpoint-mode" else {}
    pod = make_pod(
        name="db-0", owner="statefulset", labels=labels, annotations=annotations, volumes=STORE_VOL
    )
    with pytest.raises(DeniedError) as info:
        plan(pod, NS, op)
    assert f"memverge.ai/{key}" in str(info.value)
    assert allowed in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "field", "expected"),
    [
        ("checkpoint-volume-size", "2Gi", "volume_size", 2 * 2**30),
        ("checkpoint-storage-class", "fast.ssd", "storage_class", "fast.ssd"),
        ("checkpoint-files", "/tmp,/var/log/a", "files", ("/tmp", "/var/log/a")),
        ("irmap-scan-paths", "/data", "irmap_scan_paths", ("/data",)),
        ("checkpoint-diagnosis", "true", "diagnosis", True),
        ("checkpoint-interval", "5m", "interval", 300.0),
        ("checkpoint-keep", "3", "keep", 3),
        ("restore-policy", "strict", "restore_policy", "strict"),
    ],
)
def test_good_values_reach_the_plan(
    make_pod: Any, op: OperatorSettings, key: str, value: str, field: str, expected: object
) -> None:
    pod = make_pod(
        name="db-0", owner="statefulset", labels=ON, annotations={f"memverge.ai/{key}": value}
    )
    assert getattr(planned(pod, op).settings, field) == expected


def test_plain_pod_without_storage_volume_is_denied(make_pod: Any, op: OperatorSettings) -> None:
    with pytest.raises(DeniedError, match=r"memverge.ai/checkpoint-storage-volume: required"):
        plan(make_pod(name="solo", labels=ON), NS, op)


def test_plain_pod_with_its_volume_is_injected(make_pod: Any, op: OperatorSettings) -> None:
    pod = make_pod(
        name="solo",
        labels=ON,
        annotations={"memverge.ai/checkpoint-storage-volume": "ckpt"},
        volumes=STORE_VOL,
    )
    p = planned(pod, op)
    new = build(pod, p, {}, op)
    container = new["spec"]["containers"][0]
    assert container["command"][3] == "/.podckpt-store/pod-solo/app"
    assert {"name": "ckpt", "mountPath": "/.podckpt-store"} in container["volumeMounts"]
    assert op.annotation("claim") not in new["metadata"]["annotations"]
    assert all(v["name"] != "podckpt-store" for v in new["spec"]["volumes"])


def test_plain_pod_with_generated_name_uses_kubelet_expansion(
    make_pod: Any, op: OperatorSettings
) -> None:
    pod = make_pod(
        name=None,
        labels=ON,
        annotations={"memverge.ai/checkpoint-storage-volume": "ckpt"},
        volumes=STORE_VOL,
    )
    new = build(pod, planned(pod, op), {}, op)
    container = new["spec"]["containers"][0]
    assert container["command"][3] == "/.podckpt-store/pod-$(PODCKPT_POD_NAME)/app"
    env = {e["name"]: e for e in container["env"]}
    assert env["PODCKPT_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_namespace_default_turns_checkpointing_on(make_pod: Any, op: OperatorSettings) -> None:
    ns = Namespace("ns", labels=ON)
    assert planned(make_pod(name="db-0", owner="statefulset"), op, ns).mode is Mode.ACTIVE


def test_pod_label_overrides_namespace_default(make_pod: Any, op: OperatorSettings) -> None:
    ns = Namespace("ns", labels=ON)
    pod = make_pod(
        name="db-0", owner="statefulset", labels={"memverge.ai/checkpoint-mode": "false"}
    )
    assert isinstance(plan(pod, ns, op), Skip)


def test_injection_namespace_makes_dormant_agents(make_pod: Any, op: OperatorSettings) -> None:
    ns = Namespace("ns", labels={"memverge.ai/checkpoint-injection": "enabled"})
    p = planned(make_pod(name="db-0", owner="statefulset"), op, ns)
    assert p.mode is Mode.DORMANT
    new = build(make_pod(name="db-0", owner="statefulset"), p, {}, op)
    assert new["metadata"]["annotations"][op.annotation("mode")] == "dormant"


def test_dormant_plain_pod_without_volume_is_skipped_with_a_warning(
    make_pod: Any, op: OperatorSettings
) -> None:
    ns = Namespace("ns", labels={"memverge.ai/checkpoint-injection": "enabled"})
    result = plan(make_pod(name="solo"), ns, op)
    assert isinstance(result, Skip)
    assert "cannot be checkpointed later" in result.warnings[0]


def test_default_containers_exclude_proxies(make_pod: Any, op: OperatorSettings) -> None:
    containers = [
        {"name": "app", "image": "a", "command": ["/a"]},
        {"name": "istio-proxy", "image": "p", "command": ["/p"]},
        {"name": "nginx-proxy", "image": "n", "command": ["/n"]},
    ]
    pod = make_pod(name="db-0", owner="statefulset", labels=ON, containers=containers)
    p = planned(pod, op)
    assert p.containers == ("app",)
    new = build(pod, p, {}, op)
    assert new["spec"]["containers"][1] == containers[1]
    assert new["spec"]["containers"][2] == containers[2]


def test_label_container_list_uses_dots(make_pod: Any, op: OperatorSettings) -> None:
    containers = [
        {"name": "a", "image": "a", "command": ["/a"]},
        {"name": "b", "image": "b", "command": ["/b"]},
        {"name": "c", "image": "c", "command": ["/c"]},
    ]
    labels = {**ON, "memverge.ai/checkpoint-containers": "a.c"}
    pod = make_pod(name="db-0", owner="statefulset", labels=labels, containers=containers)
    assert planned(pod, op).containers == ("a", "c")


def test_only_proxies_is_denied(make_pod: Any, op: OperatorSettings) -> None:
    pod = make_pod(
        name="db-0",
        owner="statefulset",
        labels=ON,
        containers=[{"name": "istio-proxy", "image": "p"}],
    )
    with pytest.raises(DeniedError, match="checkpoint-containers"):
        plan(pod, NS, op)


def test_shadowed_keys_come_back_as_warnings(make_pod: Any, op: OperatorSettings) -> None:
    pod = make_pod(
        name="db-0",
        owner="statefulset",
        labels=ON,
        annotations={
            "memverge.ai/checkpoint-storage-volume": "ckpt",
            "memverge.ai/checkpoint-volume-size": "1Gi",
        },
        volumes=STORE_VOL,
    )
    warnings = planned(pod, op).warnings
    assert any("checkpoint-volume-size: ignored" in w for w in warnings)


def test_images_are_needed_only_without_command(make_pod: Any, op: OperatorSettings) -> None:
    containers = [
        {"name": "a", "image": "reg/a:1", "command": ["/a"]},
        {"name": "b", "image": "reg/b:1", "args": ["x"]},
    ]
    pod = make_pod(name="db-0", owner="statefulset", labels=ON, containers=containers)
    assert planned(pod, op).images == {"b": "reg/b:1"}


def test_injected_pod(make_pod: Any, op: OperatorSettings) -> None:
    containers = [
        {
            "name": "app",
            "image": "reg/app:1",
            "args": ["--port", "80"],
            "resources": {"limits": {"memory": "4Gi"}},
            "securityContext": {"capabilities": {"drop": ["ALL"]}, "runAsUser": 1000},
        }
    ]
    pod = make_pod(name="db-0", owner="statefulset", labels=ON, containers=containers)
    image = ImageArgv(("/entry",), ("--default",), "sha256:x")
    new = build(pod, planned(pod, op), {"app": image}, op)
    spec = new["spec"]
    init = spec["initContainers"][0]
    assert init["name"] == "podckpt-bundle"
    assert init["image"] == op.bundle_image
    assert init["command"] == [*op.bundle_install_command, "--key", "/podckpt-store-key/key"]
    app = spec["containers"][0]
    assert app["command"][:12] == [
        "/.podckpt/bin/podckpt-agent",
        "run",
        "--store",
        "/.podckpt-store/statefulset-db-0/app",
        "--container",
        "app",
        "--labels-file",
        "/.podckpt-meta/labels",
        "--annotations-file",
        "/.podckpt-meta/annotations",
        "--revision",
        revision(pod, containers[0]),
    ]
    assert app["command"][11].startswith("spec=sha256:")  # no controller template hash
    assert "--user" in app["command"]
    assert app["command"][-1] == "--"
    assert app["args"] == ["/entry", "--port", "80"]
    uid = {"name": "PODCKPT_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}
    assert uid in app["env"]
    security = app["securityContext"]
    # A non-root application: the agent dumps it as that user (SETUID, SETGID, DAC_OVERRIDE);
    # NET_ADMIN only where tcp-established is asked for.
    assert security["capabilities"]["add"] == [
        "CHECKPOINT_RESTORE",
        "SETPCAP",
        "SETUID",
        "SETGID",
        "DAC_OVERRIDE",
    ]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"] == {"type": "Unconfined"}
    assert "privileged" not in security
    assert security["allowPrivilegeEscalation"] is False
    assert (security["runAsUser"], security["runAsGroup"], security["runAsNonRoot"]) == (
        0,
        0,
        False,
    )
    run = contract.parse_run_args(app["command"][2:] + app["args"], environ={})
    assert run.user == "1000"
    # drop: [ALL]: the application holds none of what was added for the agent
    assert set(run.drop_capabilities) == {
        "CAP_CHECKPOINT_RESTORE",
        "CAP_SETPCAP",
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_DAC_OVERRIDE",
    }
    assert not any(e["name"].startswith("PODCKPT_APP") for e in app["env"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["podckpt-bundle"] == {
        "name": "podckpt-bundle",
        "emptyDir": {"sizeLimit": "64Mi"},
    }
    assert volumes["podckpt-store"]["persistentVolumeClaim"]["claimName"] == (
        "podckpt-statefulset-db-0"
    )
    items = volumes["podckpt-meta"]["downwardAPI"]["items"]
    assert {i["fieldRef"]["fieldPath"] for i in items} == {
        "metadata.labels",
        "metadata.annotations",
    }
    # 4 GiB at 200 MiB/s is 21 s, plus 30 s
    assert spec["terminationGracePeriodSeconds"] == 51
    annotations = new["metadata"]["annotations"]
    assert annotations[op.annotation("injected")] == "v1"
    assert annotations[op.annotation("identity")] == "statefulset/db#0"
    assert annotations[op.annotation("claim")] == "podckpt-statefulset-db-0"


def test_store_key_secret_is_mounted_into_the_bundle_init_container_only(
    make_pod: Any, op: OperatorSettings
) -> None:
    """With an fsGroup the kubelet makes a Secret volume group-readable: a non-root
    application of that group must never see it (issue 11.5)."""
    pod = make_pod(name="db-0", owner="statefulset", labels=ON)
    pod["spec"]["securityContext"] = {"fsGroup": 2000}
    spec = build(pod, planned(pod, op), {}, op)["spec"]
    (volume,) = [v for v in spec["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "podckpt-store-key"
    assert volume["secret"]["defaultMode"] == 0o400
    assert not volume["secret"].get("optional")
    init = spec["initContainers"][0]
    assert {"name": volume["name"], "mountPath": "/podckpt-store-key", "readOnly": True} in init[
        "volumeMounts"
    ]
    for container in spec["containers"]:
        assert volume["name"] not in {m["name"] for m in container["volumeMounts"]}
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[contract.Env.STORE_KEY] == contract.STORE_KEY_FILE
        assert contract.Env.STORE_ACCEPT_UNSIGNED not in env
    assert contract.STORE_KEY_FILE.startswith(contract.BUNDLE_MOUNT + "/")


def test_store_key_off_and_accept_unsigned_settings(make_pod: Any) -> None:
    pod = make_pod(name="db-0", owner="statefulset", labels=ON)
    off = OperatorSettings(store_key_secret="")
    spec = build(pod, planned(pod, off), {}, off)["spec"]
    assert not [v for v in spec["volumes"] if "secret" in v]
    assert spec["initContainers"][0]["command"] == list(off.bundle_install_command)
    assert contract.Env.STORE_KEY not in {e["name"] for e in spec["containers"][0]["env"]}
    upgrading = OperatorSettings(store_accept_unsigned=True)
    spec = build(pod, planned(pod, upgrading), {}, upgrading)["spec"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env[contract.Env.STORE_ACCEPT_UNSIGNED] == "true"


def test_longer_grace_period_of_the_user_is_kept(make_pod: Any, op: OperatorSettings) -> None:
    pod = make_pod(name="db-0", owner="statefulset", labels=ON)
    pod["spec"]["terminationGracePeriodSeconds"] = 600
    assert build(pod, planned(pod, op), {}, op)["spec"]["terminationGracePeriodSeconds"] == 600


def test_injection_is_idempotent(make_pod: Any, op: OperatorSettings) -> None:
    pod = make_pod(name="db-0", owner="statefulset", labels=ON)
    once = build(pod, planned(pod, op), {}, op)
    again = plan(once, NS, op)
    assert isinstance(again, Skip)
    assert again.reason == "already injected"
    # even with our annotation stripped, the bundle init container gives it away
    del once["metadata"]["annotations"][op.annotation("injected")]
    assert isinstance(plan(once, NS, op), Skip)


def test_deployment_pod_gets_its_slot_as_name_and_claim(
    make_pod: Any, op: OperatorSettings
) -> None:
    pod = make_pod(name=None, owner="replicaset", labels={**ON, "pod-template-hash": "5d4f8"})
    p = planned(pod, op)
    with pytest.raises(ValueError, match="slot"):
        build(pod, p, {}, op)
    new = build(pod, p, {}, op, slot=SlotChoice(1, "web-slot-1-2"))
    assert new["metadata"]["name"] == "web-slot-1-2"
    assert new["metadata"]["labels"][op.annotation("slot-group")] == "deployment-web"
    assert new["metadata"]["labels"][op.annotation("slot")] == "1"
    assert new["metadata"]["annotations"][op.annotation("claim")] == "podckpt-deployment-web-1"


def test_patch_is_the_diff_of_original_and_mutated(make_pod: Any, op: OperatorSettings) -> None:
    pod = make_pod(name="db-0", owner="statefulset", labels=ON)
    new = build(pod, planned(pod, op), {}, op)
    ops = make_patch(pod, new)
    assert jsonpatch.apply_patch(pod, ops) == new
    assert pod["spec"]["containers"][0]["command"] == ["/app"], "original left untouched"


def test_reserved_volume_names_are_refused(make_pod: Any, op: OperatorSettings) -> None:
    pod = make_pod(
        name="db-0",
        owner="statefulset",
        labels=ON,
        volumes=[{"name": "podckpt-store", "emptyDir": {}}],
    )
    with pytest.raises(DeniedError, match="reserved"):
        plan(pod, NS, op)


def test_our_footprint_never_counts_against_the_applications_limits(
    make_pod: Any, op: OperatorSettings
) -> None:
    """The bundle's emptyDir counts against the pod's ephemeral storage and the agent runs in
    the container's memory cgroup: limits are raised by exactly that, and requests with them
    so that a Guaranteed pod stays Guaranteed."""
    limits = {"memory": "1Gi", "ephemeral-storage": "40Mi", "cpu": "1"}
    containers = [
        {
            "name": "app",
            "image": "r/app:1",
            "command": ["/app"],
            "resources": {"limits": dict(limits), "requests": dict(limits)},
        },
        {"name": "side", "image": "r/side:1", "command": ["/side"]},
    ]
    pod = make_pod(name="db-0", owner="statefulset", labels=ON, containers=containers)
    p = planned(pod, op)
    new = build(pod, p, {}, op)
    app = new["spec"]["containers"][0]["resources"]
    assert app["limits"] == {"memory": "1088Mi", "ephemeral-storage": "104Mi", "cpu": "1"}
    assert app["requests"] == app["limits"], "QoS class Guaranteed is kept"
    assert "resources" not in new["spec"]["containers"][1], "no limit, nothing to exceed"
    assert any("ephemeral-storage of container app by 64Mi" in w for w in p.warnings)
    assert any("memory of container app by 64Mi" in w for w in p.warnings)
    bundle = next(v for v in new["spec"]["volumes"] if v["name"] == "podckpt-bundle")
    assert bundle["emptyDir"]["sizeLimit"] == "64Mi", "our footprint is bounded"


def test_pod_level_limits_are_raised_instead(make_pod: Any, op: OperatorSettings) -> None:
    pod = make_pod(name="db-0", owner="statefulset", labels=ON)
    pod["spec"]["resources"] = {"limits": {"ephemeral-storage": "100Mi", "memory": "2Gi"}}
    new = build(pod, planned(pod, op), {}, op)
    assert new["spec"]["resources"]["limits"] == {
        "ephemeral-storage": "164Mi",
        "memory": "2112Mi",
    }


def test_a_pod_without_limits_gets_none(make_pod: Any, op: OperatorSettings) -> None:
    containers = [{"name": "app", "image": "r/app:1", "command": ["/app"]}]
    pod = make_pod(name="db-0", owner="statefulset", labels=ON, containers=containers)
    p = planned(pod, op)
    assert p.raises == ()
    assert "resources" not in build(pod, p, {}, op)["spec"]["containers"][0]


def test_grace_period_from_the_measured_throughput_reaches_the_agent(
    make_pod: Any, op: OperatorSettings
) -> None:
    """The agent's deadline (PODCKPT_GRACE_PERIOD_SECONDS) is the pod's final grace period;
    a throughput measured on the volume (sizing.MEASURED_THROUGHPUT) replaces the assumed."""
    app = {
        "name": "app",
        "image": "registry.example/app:1",
        "command": ["/app"],
        "resources": {"limits": {"memory": "4Gi"}},
    }
    pod = make_pod(name="db-0", owner="statefulset", labels=ON, containers=[app])
    assumed = build(pod, planned(pod, op), {}, op)
    measured = build(pod, planned(pod, op), {}, op, measured_bytes_per_second=50 * 2**20)
    # 4 GiB at 200 MiB/s (assumed) is 21 s, at 50 MiB/s (measured) 82 s; plus 30 s
    grace = {
        name: (p["spec"]["terminationGracePeriodSeconds"], p["spec"]["containers"][0]["env"])
        for name, p in (("assumed", assumed), ("measured", measured))
    }
    assert grace["assumed"][0] == 51
    assert grace["measured"][0] == 112
    for seconds, env in grace.values():
        assert {"name": contract.Env.GRACE_PERIOD, "value": str(seconds)} in env
    annotations = measured["metadata"]["annotations"]
    assert annotations[op.annotation("dump-bytes-per-second")] == str(50 * 2**20)
    assert op.annotation("dump-bytes-per-second") not in assumed["metadata"]["annotations"]
    pod["spec"]["terminationGracePeriodSeconds"] = 600  # the user's longer one is kept
    kept = build(pod, planned(pod, op), {}, op, measured_bytes_per_second=50 * 2**20)
    env = kept["spec"]["containers"][0]["env"]
    assert {"name": contract.Env.GRACE_PERIOD, "value": "600"} in env
