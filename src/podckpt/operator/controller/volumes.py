"""The checkpoint PVC of an identity, as a manifest (pure; the handler creates it).

Size: `checkpoint-volume-size`, else derived from the memory limits of the checkpointed
containers as admitted, i.e. with the agent's 64 MiB allowance (`sizing.volume_size`:
(limits + 10 % + 256 MiB) x (keep + 1)).
Class: `checkpoint-storage-class`, else none given, so the cluster's default class applies.
Owner: the top-level workload (Deployment, StatefulSet, Job, bare ReplicaSet), so that deleting
the workload deletes its checkpoints through Kubernetes garbage collection, and nothing else
does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from podckpt.api import CheckpointSettings
from podckpt.operator.domain import gpu, sizing
from podckpt.operator.domain.identity import Identity, Owner, top_level_owner
from podckpt.operator.settings import OperatorSettings


@dataclasses.dataclass(frozen=True)
class ClaimSize:
    bytes: int
    reason: str


def claim_size(
    settings: CheckpointSettings,
    containers: Iterable[Mapping[str, Any]],
    op: OperatorSettings,
    *,
    pod_spec: Mapping[str, Any] | None = None,
) -> ClaimSize:
    """`pod_spec`: for the GPU model of a pod whose containers use GPUs (domain/gpu.py)."""
    if settings.volume_size is not None:
        return ClaimSize(settings.volume_size, "checkpoint-volume-size")
    containers = list(containers)
    per_gpu = gpu.pod_gpu_memory(
        pod_spec or {}, containers, settings.gpu_memory, op.assumed_gpu_memory_bytes
    )
    memory = sizing.checkpointed_memory(
        containers, op.assumed_memory_bytes, gpu_memory=per_gpu.bytes if per_gpu else 0
    )
    size = sizing.volume_size(
        memory,
        keep=settings.keep,
        headroom_fraction=op.volume_headroom_fraction,
        headroom_bytes=op.volume_headroom_bytes,
        default_bytes=op.default_volume_bytes,
    )
    if memory.all_unlimited and memory.gpu:
        return ClaimSize(
            size,
            f"no memory limits: assumed memory + {sizing.format_bytes(memory.gpu)} of GPU memory,"
            f" x{settings.keep + 1} generations",
        )
    if memory.all_unlimited:
        return ClaimSize(size, "default size (no checkpointed container has a memory limit)")
    return ClaimSize(
        size,
        f"memory limits {sizing.format_bytes(memory.total)} + headroom, x{settings.keep + 1}"
        " generations",
    )


__all__ = ["ClaimSize", "build_claim", "claim_size", "owner_reference", "top_level_owner"]


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        # True would need `update` on the owner's finalizers; garbage collection works without.
        "blockOwnerDeletion": False,
    }


def build_claim(
    *,
    identity: Identity,
    namespace: str,
    owner: Owner | None,
    size: ClaimSize,
    storage_class: str | None,
    op: OperatorSettings,
) -> dict[str, Any]:
    """The PVC manifest of `identity`."""
    metadata: dict[str, Any] = {
        "name": identity.claim_name,
        "namespace": namespace,
        "labels": {
            op.annotation("managed-by"): "podckpt",
            op.annotation("workload-kind"): identity.kind.value,
        },
        "annotations": {
            op.annotation("identity"): identity.encode(),
            op.annotation("size-reason"): size.reason,
        },
    }
    if owner is not None:
        metadata["ownerReferences"] = [owner_reference(owner)]
    spec: dict[str, Any] = {
        "accessModes": [op.volume_access_mode],
        "resources": {"requests": {"storage": sizing.format_bytes(size.bytes)}},
    }
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": spec}
