"""The checkpoint PVC manifest: size, class, owner."""

from __future__ import annotations

from podckpt.api import parse_settings
from podckpt.operator.controller.volumes import build_claim, claim_size, top_level_owner
from podckpt.operator.domain.identity import Identity, Owner, WorkloadKind
from podckpt.operator.settings import OperatorSettings

GI = 2**30
DEPLOY = Owner("apps/v1", "Deployment", "web", "d-uid")
RS = Owner("apps/v1", "ReplicaSet", "web-5d4f8", "rs-uid")


def test_size_from_key_wins(op: OperatorSettings) -> None:
    settings = parse_settings({}, {"memverge.ai/checkpoint-volume-size": "3Gi"})
    size = claim_size(settings, [{"name": "a", "resources": {"limits": {"memory": "8Gi"}}}], op)
    assert size.bytes == 3 * GI


def test_size_from_memory_limits(op: OperatorSettings) -> None:
    containers = [
        {"name": "a", "resources": {"limits": {"memory": "1Gi"}}},
        {"name": "b", "resources": {"limits": {"memory": "1Gi"}}},
    ]
    size = claim_size(parse_settings({}, {}), containers, op)
    # (2 GiB + 10 % + 256 MiB) x 3 generations
    expected = 3 * (2 * GI * 1.1 + 256 * 2**20)
    assert expected <= size.bytes < expected + 2**20
    assert "memory limits 2048Mi" in size.reason


def test_claim_manifest(op: OperatorSettings) -> None:
    identity = Identity(WorkloadKind.DEPLOYMENT, "web", "2")
    claim = build_claim(
        identity=identity,
        namespace="ns",
        owner=DEPLOY,
        size=claim_size(parse_settings({}, {}), [], op),
        storage_class="fast",
        op=op,
    )
    assert claim["metadata"]["name"] == "podckpt-deployment-web-2"
    assert claim["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "web",
            "uid": "d-uid",
            "controller": True,
            "blockOwnerDeletion": False,
        }
    ]
    assert claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10240Mi"
    assert claim["metadata"]["annotations"][op.annotation("identity")] == "deployment/web#2"


def test_default_class_is_left_to_the_cluster(op: OperatorSettings) -> None:
    claim = build_claim(
        identity=Identity(WorkloadKind.STATEFULSET, "db", "0"),
        namespace="ns",
        owner=None,
        size=claim_size(parse_settings({}, {}), [], op),
        storage_class=None,
        op=op,
    )
    assert "storageClassName" not in claim["spec"]
    assert "ownerReferences" not in claim["metadata"]


def test_replicaset_pods_belong_to_the_deployment() -> None:
    rs_body = {
        "metadata": {
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": "web",
                    "uid": "d-uid",
                    "controller": True,
                }
            ]
        }
    }
    assert top_level_owner(RS, rs_body) == DEPLOY
    assert top_level_owner(RS, {"metadata": {}}) == RS
    job = Owner("batch/v1", "Job", "train", "j")
    assert top_level_owner(job, None) == job
