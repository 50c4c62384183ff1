"""The controller: checkpoint PVCs (size, class, owner, garbage collection) and Events."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from kubehelpers import Kube, eventually
from kubernetes import client

from podckpt.api import contract, parse_quantity

pytestmark = pytest.mark.apiserver

ON = {"memverge.ai/checkpoint-mode": "true"}
MI = 2**20


def _statefulset(name: str, annotations: dict[str, str], memory: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {**ON, "app": name}, "annotations": annotations},
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
            },
        },
    }


def _bytes(claim: dict[str, Any]) -> int:
    return parse_quantity("storage", claim["spec"]["resources"]["requests"]["storage"])


def _default_class(kube: Kube) -> str:
    for klass in kube.storage.list_storage_class().items:
        annotations = klass.metadata.annotations or {}
        if annotations.get("storageclass.kubernetes.io/is-default-class") == "true":
            return str(klass.metadata.name)
    raise AssertionError("the cluster has no default StorageClass")


def test_pvc_sized_from_memory_limits_in_default_class_owned_by_workload(
    kube: Kube, namespace: str
) -> None:
    kube.apps.create_namespaced_stateful_set(namespace, _statefulset("db", {}, "1Gi"))
    claim = eventually(lambda: kube.pvc(namespace, "podckpt-statefulset-db-0"), what="PVC")
    owner = kube.apps.read_namespaced_stateful_set("db", namespace)
    (ref,) = claim["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"]) == ("StatefulSet", "db", owner.metadata.uid)
    # (1 GiB + 64 MiB for the agent + 10 % + 256 MiB) x 3 generations: the controller sizes
    # from the limits as admitted, which include the agent's allowance (sizing.footprint_raises)
    assert _bytes(claim) == 4359 * MI
    assert claim["spec"]["storageClassName"] == _default_class(kube)
    reasons = eventually(
        lambda: {"Injected", "VolumeProvisioned"} <= (r := kube.reasons(namespace, "db-0")) and r,
        what="events",
    )
    assert "VolumeProvisioned" in reasons


def test_pvc_size_and_class_from_keys(kube: Kube, namespace: str) -> None:
    kube.storage.create_storage_class(
        {
            "metadata": {"name": f"slow-{namespace}"},
            "provisioner": "example.invalid/none",  # never binds: only the claim matters here
        }
    )
    try:
        annotations = {
            "memverge.ai/checkpoint-volume-size": "3Gi",
            "memverge.ai/checkpoint-storage-class": f"slow-{namespace}",
        }
        kube.apps.create_namespaced_stateful_set(
            namespace, _statefulset("sized", annotations, "8Gi")
        )
        claim = eventually(lambda: kube.pvc(namespace, "podckpt-statefulset-sized-0"), what="PVC")
        assert _bytes(claim) == 3 * 2**30
        assert claim["spec"]["storageClassName"] == f"slow-{namespace}"
    finally:
        kube.storage.delete_storage_class(f"slow-{namespace}")


def test_deployment_pvcs_belong_to_the_deployment_and_die_with_it(
    kube: Kube, namespace: str
) -> None:
    kube.apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": _statefulset("web", {}, "128Mi")["spec"]["template"],
            },
        },
    )
    claims = [
        eventually(lambda n=n: kube.pvc(namespace, n), what=n)
        for n in ("podckpt-deployment-web-0", "podckpt-deployment-web-1")
    ]
    deployment = kube.apps.read_namespaced_deployment("web", namespace)
    for claim in claims:
        (ref,) = claim["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["uid"]) == ("Deployment", deployment.metadata.uid)

    # deleting a pod deletes no checkpoint
    kube.core.delete_namespaced_pod("web-slot-0", namespace, grace_period_seconds=0)
    eventually(
        lambda: any(p["metadata"]["name"] == "web-slot-0" for p in kube.pods(namespace, "app=web")),
        what="replacement",
    )
    assert kube.pvc(namespace, "podckpt-deployment-web-0") is not None

    # deleting the workload does
    kube.apps.delete_namespaced_deployment("web", namespace, propagation_policy="Background")
    for name in ("podckpt-deployment-web-0", "podckpt-deployment-web-1"):
        eventually(
            lambda name=name: (
                (c := kube.pvc(namespace, name)) is None
                or c["metadata"].get("deletionTimestamp") is not None
            ),
            timeout=60,
            what=f"garbage collection of {name}",
        )


def test_pod_labelled_after_creation_gets_a_warning(kube: Kube, namespace: str) -> None:
    kube.create_pod(
        namespace,
        {
            "metadata": {"name": "late"},
            "spec": {
                "containers": [{"name": "app", "image": "example.invalid/a", "command": ["/a"]}]
            },
        },
    )
    kube.core.patch_namespaced_pod("late", namespace, {"metadata": {"labels": ON}})
    eventually(lambda: "NotInjected" in kube.reasons(namespace, "late"), what="NotInjected event")
    (event,) = [e for e in kube.events(namespace, "late") if e["reason"] == "NotInjected"]
    assert event["type"] == "Warning"
    assert "pod template" in event["message"]


def test_controller_writes_nothing_to_pods_but_its_gate(kube: Kube, namespace: str) -> None:
    kube.apps.create_namespaced_stateful_set(namespace, _statefulset("quiet", {}, "64Mi"))
    eventually(lambda: kube.pvc(namespace, "podckpt-statefulset-quiet-0"), what="PVC")
    pod = eventually(
        lambda: (
            (found := kube.pods(namespace, "app=quiet"))
            and not found[0]["spec"].get("schedulingGates")
            and found[0]
        ),
        what="the scheduling gate removed",
    )
    assert not pod["metadata"].get("finalizers")
    assert not [k for k in pod["metadata"]["annotations"] if "kopf" in k]
    for entry in pod["metadata"].get("managedFields") or ():
        if "kopf" in entry["manager"] or "podckpt" in entry["manager"]:
            # removing a list entry owns no field: no label, annotation, finalizer or spec
            owned = json.dumps(entry.get("fieldsV1") or {})
            assert not any(
                f in owned for f in ("f:labels", "f:annotations", "f:finalizers", "f:containers")
            ), entry


def test_orphaned_checkpoint_volume_is_reported_not_deleted(
    kube: Kube, namespace: str, apiserver_cluster: Any
) -> None:
    # Made by the controller (only it may label a claim podckpt.io/*), then orphaned.
    kubeconfig = apiserver_cluster.token_kubeconfig("podckpt-system", "podckpt-controller")
    with apiserver_cluster.api_client(kubeconfig) as api:
        Kube(api).core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {
                    "name": "podckpt-statefulset-gone-0",
                    "labels": {"podckpt.io/managed-by": "podckpt"},
                },
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
    eventually(
        lambda: "OrphanedCheckpointVolume" in kube.reasons(namespace, "podckpt-statefulset-gone-0"),
        what="orphan report",
    )
    (event,) = [
        e
        for e in kube.events(namespace, "podckpt-statefulset-gone-0")
        if e["reason"] == "OrphanedCheckpointVolume"
    ]
    assert event["type"] == "Warning"
    assert kube.pvc(namespace, "podckpt-statefulset-gone-0") is not None


def _can(kube: Kube, serviceaccount: str, verb: str, resource: str, namespace: str) -> bool:
    review = client.AuthorizationV1Api(kube.api).create_subject_access_review(
        {
            "spec": {
                "user": f"system:serviceaccount:podckpt-system:{serviceaccount}",
                "resourceAttributes": {
                    "verb": verb,
                    "resource": resource,
                    "namespace": namespace,
                },
            }
        }
    )
    return bool(review.status.allowed)


def test_store_key_secret_per_namespace_mounted_only_for_the_bundle_init_container(
    kube: Kube, namespace: str
) -> None:
    """Issue 11.5: the key that authenticates a namespace's checkpoints is created by the
    controller (which can create Secrets, never read them) and reaches the agent only through
    the bundle init container: no checkpointed container mounts the Secret."""
    kube.apps.create_namespaced_stateful_set(namespace, _statefulset("keyed", {}, "64Mi"))
    secret = eventually(
        lambda: (
            kube.plain(kube.core.read_namespaced_secret("podckpt-store-key", namespace))
            if "podckpt-store-key"
            in {s.metadata.name for s in kube.core.list_namespaced_secret(namespace).items}
            else None
        ),
        what="store key Secret",
    )
    assert secret["type"] == "Opaque"
    assert secret["immutable"] is True
    assert len(base64.b64decode(secret["data"]["key"])) == 32
    assert secret["metadata"]["labels"] == {"podckpt.io/managed-by": "podckpt"}

    pod = eventually(lambda: (p := kube.pods(namespace)) and p[0], what="pod")
    spec = pod["spec"]
    (volume,) = [v for v in spec["volumes"] if v.get("secret")]
    assert volume["secret"]["secretName"] == "podckpt-store-key"
    (init,) = [c for c in spec["initContainers"] if c["name"] == "podckpt-bundle"]
    assert volume["name"] in {m["name"] for m in init["volumeMounts"]}
    for other in spec["initContainers"]:  # the user probe runs the application's image
        if other is not init:
            assert volume["name"] not in {m["name"] for m in other["volumeMounts"]}
    assert init["command"][-2:] == ["--key", "/podckpt-store-key/key"]
    for container in spec["containers"]:
        assert volume["name"] not in {m["name"] for m in container["volumeMounts"]}
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[contract.Env.STORE_KEY] == contract.STORE_KEY_FILE
    assert "StoreKeyCreated" in eventually(
        lambda: (r := kube.reasons(namespace, pod["metadata"]["name"])) and r, what="events"
    )

    # A second workload of the namespace shares the key: the Secret is never rewritten.
    kube.apps.create_namespaced_stateful_set(namespace, _statefulset("keyed2", {}, "64Mi"))
    eventually(lambda: kube.pvc(namespace, "podckpt-statefulset-keyed2-0"), what="PVC")
    again = kube.plain(kube.core.read_namespaced_secret("podckpt-store-key", namespace))
    assert again["data"] == secret["data"]
    assert again["metadata"]["resourceVersion"] == secret["metadata"]["resourceVersion"]

    # The shipped RBAC: create only.
    assert _can(kube, "podckpt-controller", "create", "secrets", namespace)
    for verb in ("get", "list", "watch", "update", "delete"):
        assert not _can(kube, "podckpt-controller", verb, "secrets", namespace), verb


def test_measured_dump_throughput_sets_the_next_grace_period(kube: Kube, namespace: str) -> None:
    """The agent's final checkpoint reports its throughput (termination message, exit 202);
    the controller records it on the identity's PVC; the replacement pod's grace period and
    the agent's deadline come from it (docs/operator.md, "The grace period")."""
    kube.apps.create_namespaced_stateful_set(namespace, _statefulset("db", {}, "1Gi"))
    eventually(lambda: kube.pvc(namespace, "podckpt-statefulset-db-0"), what="PVC")
    first = eventually(lambda: (p := kube.pods(namespace, "app=db")) and p[0], what="pod")
    # 1 GiB at the assumed 200 MiB/s is 6 s, plus 30 s
    assert first["spec"]["terminationGracePeriodSeconds"] == 36
    commit = {
        "agent": "podckpt",
        "phase": "commit",
        "outcome": "ok",
        "generation": "20261201T000000Z-000001",
        "bytes": 2**30,
        "throughput_bps": 50 * MI,
    }
    status = {
        "containerStatuses": [
            {
                "name": "app",
                "image": "example.invalid/app:1",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {
                    "terminated": {
                        "exitCode": int(contract.ExitCode.CHECKPOINTED),
                        "reason": "Error",
                        "message": json.dumps(commit) + "\n",
                        "containerID": "containerd://0123",
                    }
                },
            }
        ]
    }
    kube.core.patch_namespaced_pod_status("db-0", namespace, {"status": status})
    annotation = "podckpt.io/dump-bytes-per-second"
    claim = eventually(
        lambda: (
            (c := kube.pvc(namespace, "podckpt-statefulset-db-0"))
            and annotation in (c["metadata"].get("annotations") or {})
            and c
        ),
        what="the measured throughput on the PVC",
    )
    assert claim["metadata"]["annotations"][annotation] == str(50 * MI)

    kube.core.delete_namespaced_pod("db-0", namespace, grace_period_seconds=0)
    old_uid = first["metadata"]["uid"]
    replacement = eventually(
        lambda: next(
            (p for p in kube.pods(namespace, "app=db") if p["metadata"]["uid"] != old_uid), None
        ),
        what="the replacement pod",
    )
    # 1 GiB at the measured 50 MiB/s is 21 s, plus 30 s
    assert replacement["spec"]["terminationGracePeriodSeconds"] == 51
    env = {e["name"]: e.get("value") for e in replacement["spec"]["containers"][0]["env"]}
    assert env[contract.Env.GRACE_PERIOD] == "51"
