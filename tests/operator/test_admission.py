"""The webhook against the real API server: keys, denials, workload kinds, idempotency,
dry-run. Workload pods are made by the real controllers of the controller-manager (no node:
they stay Pending, which is all admission needs)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from kubehelpers import Kube, eventually

pytestmark = pytest.mark.apiserver

ON = {"memverge.ai/checkpoint-mode": "true"}
INJECTED = "podckpt.io/injected"


def pod(
    name: str,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
        "spec": {
            "containers": containers
            or [
                {
                    "name": "app",
                    "image": "example.invalid/app:1",
                    "command": ["/app", "--serve"],
                    "resources": {"limits": {"memory": "256Mi"}},
                }
            ],
            "volumes": volumes if volumes is not None else [{"name": "ckpt", "emptyDir": {}}],
        },
    }


def own_volume(**annotations: str) -> dict[str, str]:
    return {"memverge.ai/checkpoint-storage-volume": "ckpt", **annotations}


def template(labels: dict[str, str], memory: str = "256Mi") -> dict[str, Any]:
    return {
        "metadata": {"labels": labels},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "example.invalid/app:1",
                    "command": ["/app"],
                    "resources": {"limits": {"memory": memory}},
                }
            ]
        },
    }


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("checkpoint-mode", "yes please", "true or false"),
        ("checkpoint-containers", "app,ghost", "names of containers of this pod: app"),
        ("checkpoint-storage-volume", "nope", "the name of a volume of this pod: ckpt"),
        ("checkpoint-storage-class", "Bad_Class", "StorageClass"),
        ("checkpoint-volume-size", "2GG", "quantity"),
        ("checkpoint-files", "relative", "absolute paths"),
        ("irmap-scan-paths", "relative", "absolute paths"),
        ("checkpoint-diagnosis", "maybe", "true or false"),
        ("checkpoint-interval", "1s", "duration"),
        ("checkpoint-keep", "0", "whole number"),
        ("restore-policy", "newest", "latest | fresh | strict"),
    ],
)
def test_invalid_key_is_denied_naming_key_and_allowed(
    kube: Kube, namespace: str, key: str, value: str, allowed: str
) -> None:
    annotations = {"memverge.ai/checkpoint-storage-volume": "ckpt", f"memverge.ai/{key}": value}
    labels = {"memverge.ai/checkpoint-mode": "true"}
    if key == "checkpoint-mode":
        labels = {"memverge.ai/checkpoint-mode": "invalid"}  # label values cannot hold spaces
        value = "invalid"
        annotations.pop(f"memverge.ai/{key}")
    message = kube.denial(namespace, pod("p", labels=labels, annotations=annotations))
    assert f"memverge.ai/{key}" in message
    assert repr(value) in message
    if key != "checkpoint-mode":
        assert allowed in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("checkpoint-containers", "app"),
        ("checkpoint-storage-class", "fast"),
        ("checkpoint-volume-size", "2Gi"),
        ("checkpoint-files", "/tmp,/var/log"),
        ("irmap-scan-paths", "/data"),
        ("checkpoint-diagnosis", "true"),
        ("checkpoint-interval", "10m"),
        ("checkpoint-keep", "3"),
        ("restore-policy", "strict"),
    ],
)
def test_valid_key_is_admitted_and_reaches_the_agent(
    kube: Kube, namespace: str, key: str, value: str
) -> None:
    created = kube.create_pod(
        namespace,
        pod("p", labels=ON, annotations=own_volume(**{f"memverge.ai/{key}": value})),
    )
    assert created["metadata"]["annotations"][INJECTED] == "v1"
    # the agent reads the keys from the downward-API annotations file
    meta = next(v for v in created["spec"]["volumes"] if v["name"] == "podckpt-meta")
    paths = {i["fieldRef"]["fieldPath"] for i in meta["downwardAPI"]["items"]}
    assert paths == {"metadata.labels", "metadata.annotations"}


def test_plain_pod_without_storage_volume_is_denied(kube: Kube, namespace: str) -> None:
    message = kube.denial(namespace, pod("p", labels=ON))
    assert "memverge.ai/checkpoint-storage-volume: required" in message


def test_plain_pod_is_wrapped(kube: Kube, namespace: str) -> None:
    created = kube.create_pod(namespace, pod("solo", labels=ON, annotations=own_volume()))
    spec = created["spec"]
    app = spec["containers"][0]
    assert app["command"][:4] == [
        "/.podckpt/bin/podckpt-agent",
        "run",
        "--store",
        "/.podckpt-store/pod-solo/app",
    ]
    assert app["args"] == ["/app", "--serve"]
    assert spec["initContainers"][0]["name"] == "podckpt-bundle"
    security = app["securityContext"]
    assert security["seccompProfile"] == {"type": "Unconfined"}
    assert "CHECKPOINT_RESTORE" in security["capabilities"]["add"]
    assert not security.get("privileged")
    # 256 MiB at 200 MiB/s: 2 s + 30 s base
    assert spec["terminationGracePeriodSeconds"] == 32


def test_unlabelled_pod_is_untouched(kube: Kube, namespace: str) -> None:
    created = kube.create_pod(namespace, pod("plain"))
    assert INJECTED not in (created["metadata"].get("annotations") or {})
    assert created["spec"]["containers"][0]["command"] == ["/app", "--serve"]


def test_warnings_reach_kubectl(apiserver_cluster: Any, namespace: str, operator: Any) -> None:
    manifest = pod(
        "warned",
        labels=ON,
        annotations=own_volume(**{"memverge.ai/checkpoint-volume-size": "1Gi"}),
    )
    proc = apiserver_cluster.kubectl(
        "create", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest)
    )
    assert "memverge.ai/checkpoint-volume-size: ignored" in proc.stderr
    assert "seccompProfile Unconfined" in proc.stderr


def test_idempotent_resubmission_is_not_double_wrapped(kube: Kube, namespace: str) -> None:
    first = kube.create_pod(namespace, pod("once", labels=ON, annotations=own_volume()))
    again = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "twice",
            "labels": first["metadata"]["labels"],
            "annotations": first["metadata"]["annotations"],
        },
        "spec": first["spec"],
    }
    second = kube.create_pod(namespace, again)
    assert second["spec"]["containers"][0]["command"] == first["spec"]["containers"][0]["command"]
    # the bundle and the user probe (no runAsUser: the image's USER decides), once each
    assert [c["name"] for c in second["spec"]["initContainers"]] == [
        "podckpt-bundle",
        "podckpt-user-0",
    ]
    assert second["spec"]["containers"][0]["args"] == ["/app", "--serve"]


def test_dry_run_creates_nothing(kube: Kube, namespace: str) -> None:
    kube.apps.create_namespaced_stateful_set(
        namespace,
        {
            "metadata": {"name": "dry"},
            "spec": {
                "replicas": 0,
                "serviceName": "dry",
                "selector": {"matchLabels": {"app": "dry"}},
                "template": template({"app": "dry"}),
            },
        },
    )
    owner = kube.apps.read_namespaced_stateful_set("dry", namespace)
    manifest = pod("dry-0", labels={**ON, "app": "dry"}, volumes=[])
    manifest["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "name": "dry",
            "uid": owner.metadata.uid,
            "controller": True,
        }
    ]
    result = kube.create_pod(namespace, manifest, dry_run="All")
    assert result["metadata"]["annotations"]["podckpt.io/claim"] == "podckpt-statefulset-dry-0"
    time.sleep(2)  # give a (wrong) controller time to react to something that does not exist
    assert kube.pods(namespace, "app=dry") == []
    assert kube.pvc(namespace, "podckpt-statefulset-dry-0") is None


def test_namespace_default_injects_unlabelled_pods(kube: Kube, namespace: str) -> None:
    kube.core.patch_namespace(namespace, {"metadata": {"labels": ON}})
    created = eventually(
        lambda: _created_injected(kube, namespace, pod("by-default", annotations=own_volume())),
        timeout=15,
        what="the namespace label to reach the webhook's watch",
    )
    assert created["metadata"]["annotations"]["podckpt.io/mode"] == "active"
    # a pod may still say no
    off = pod("opted-out", labels={"memverge.ai/checkpoint-mode": "false"})
    assert INJECTED not in (kube.create_pod(namespace, off)["metadata"].get("annotations") or {})


def _created_injected(kube: Kube, namespace: str, manifest: dict[str, Any]) -> Any:
    created = kube.create_pod(namespace, manifest)
    if INJECTED in (created["metadata"].get("annotations") or {}):
        return created
    kube.core.delete_namespaced_pod(manifest["metadata"]["name"], namespace)
    eventually(lambda: not kube.pods(namespace) or None, what="pod deletion")
    return None


def test_injection_namespace_gives_dormant_agents(kube: Kube, namespace: str) -> None:
    kube.core.patch_namespace(
        namespace, {"metadata": {"labels": {"memverge.ai/checkpoint-injection": "enabled"}}}
    )
    created = eventually(
        lambda: _created_injected(kube, namespace, pod("sleeper", annotations=own_volume())),
        timeout=15,
        what="injection",
    )
    assert created["metadata"]["annotations"]["podckpt.io/mode"] == "dormant"


def test_statefulset_pods_get_their_ordinal_identity(kube: Kube, namespace: str) -> None:
    kube.apps.create_namespaced_stateful_set(
        namespace,
        {
            "metadata": {"name": "db"},
            "spec": {
                "replicas": 2,
                "podManagementPolicy": "Parallel",
                "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}},
                "template": template({**ON, "app": "db"}),
            },
        },
    )
    pods = eventually(lambda: len(p := kube.pods(namespace, "app=db")) == 2 and p, what="pods")
    claims = sorted(p["metadata"]["annotations"]["podckpt.io/claim"] for p in pods)
    assert claims == ["podckpt-statefulset-db-0", "podckpt-statefulset-db-1"]


def test_job_and_indexed_job(kube: Kube, namespace: str) -> None:
    for name, extra in (("once", {}), ("indexed", {"completionMode": "Indexed"})):
        kube.batch.create_namespaced_job(
            namespace,
            {
                "metadata": {"name": name},
                "spec": {
                    "completions": 2,
                    "parallelism": 2,
                    **extra,
                    "template": {
                        **template({**ON, "job": name}),
                        "spec": {**template({})["spec"], "restartPolicy": "Never"},
                    },
                },
            },
        )
    plain = eventually(lambda: len(p := kube.pods(namespace, "job=once")) == 2 and p, what="job")
    uid = kube.batch.read_namespaced_job("once", namespace).metadata.uid.replace("-", "")[:8]
    assert {p["metadata"]["annotations"]["podckpt.io/claim"] for p in plain} == {
        f"podckpt-job-once-{uid}"
    }
    indexed = eventually(
        lambda: len(p := kube.pods(namespace, "job=indexed")) == 2 and p, what="indexed job"
    )
    uid = kube.batch.read_namespaced_job("indexed", namespace).metadata.uid.replace("-", "")[:8]
    assert {p["metadata"]["annotations"]["podckpt.io/claim"] for p in indexed} == {
        f"podckpt-job-indexed-{uid}-0",
        f"podckpt-job-indexed-{uid}-1",
    }


def test_cronjob_run_is_its_own_identity(
    kube: Kube, namespace: str, apiserver_cluster: Any
) -> None:
    cron = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly"},
        "spec": {
            "schedule": "0 3 * * *",
            "jobTemplate": {
                "spec": {
                    "template": {
                        **template({**ON, "cron": "nightly"}),
                        "spec": {**template({})["spec"], "restartPolicy": "Never"},
                    }
                }
            },
        },
    }
    apiserver_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(cron))
    for run in ("run-1", "run-2"):  # like the CronJob controller: a Job owned by the CronJob
        apiserver_cluster.kubectl("create", "job", "-n", namespace, run, "--from=cronjob/nightly")
    pods = eventually(
        lambda: len(p := kube.pods(namespace, "cron=nightly")) == 2 and p, what="cron pods"
    )
    claims = {p["metadata"]["annotations"]["podckpt.io/claim"] for p in pods}
    assert len(claims) == 2, "a new run never restores an old run"
    assert all(c.startswith("podckpt-job-run-") for c in claims)


def test_deployment_scaled_to_three_at_once_gets_three_slots(kube: Kube, namespace: str) -> None:
    kube.apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": template({**ON, "app": "web"}),
            },
        },
    )
    pods = eventually(lambda: len(p := kube.pods(namespace, "app=web")) == 3 and p, what="pods")
    names = sorted(p["metadata"]["name"] for p in pods)
    assert names == ["web-slot-0", "web-slot-1", "web-slot-2"]
    claims = sorted(p["metadata"]["annotations"]["podckpt.io/claim"] for p in pods)
    assert claims == [f"podckpt-deployment-web-{i}" for i in range(3)]

    # a replacement takes the slot that the deleted pod freed (and restores its checkpoint);
    # wait out the webhook's reservations of the first creations (2 s in these tests)
    time.sleep(3)
    kube.core.delete_namespaced_pod("web-slot-1", namespace, grace_period_seconds=0)

    def replaced() -> list[str] | None:
        current = sorted(p["metadata"]["name"] for p in kube.pods(namespace, "app=web"))
        fresh = [
            p for p in kube.pods(namespace, "app=web") if p["metadata"]["name"] == "web-slot-1"
        ]
        if current == names and fresh and fresh[0]["metadata"]["uid"] not in uids:
            return current
        return None

    uids = {p["metadata"]["uid"] for p in pods}
    eventually(replaced, what="the replacement in slot 1")


def test_system_namespace_is_never_injected(kube: Kube, operator: Any) -> None:
    del operator
    manifest = pod("podckpt-probe", labels=ON, annotations=own_volume())
    created = kube.create_pod("kube-system", manifest)
    try:
        assert INJECTED not in (created["metadata"].get("annotations") or {})
    finally:
        kube.core.delete_namespaced_pod("podckpt-probe", "kube-system", grace_period_seconds=0)


def test_kubectl_builds_the_kustomization(apiserver_cluster: Any) -> None:
    out = apiserver_cluster.kubectl("kustomize", "config").stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(out) if d}
    assert {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "MutatingWebhookConfiguration",
        "PodDisruptionBudget",
    } <= kinds
    # and the API server accepts all of it (server-side dry run)
    proc = apiserver_cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=out, check=False)
    assert proc.returncode == 0, proc.stderr
