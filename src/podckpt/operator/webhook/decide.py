"""Whether and how a new pod is injected, decided from the pod and its namespace only (pure).

The first half of the admission pipeline (should-inject -> parse -> validate): `plan()`
returns a `Plan` (inject, and what `inject.build()` needs), a `Skip` (admit unchanged) or
raises `DeniedError` (refuse, with a message naming the key). The handler then resolves what
needs the outside world (image configs, the Deployment slot, the claim gate) and `inject`
rewrites a copy of the pod. Deciding is kept apart from building so that every admission rule
reads in one function and has a unit test without a pod being built.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from podckpt.api import (
    CheckpointSettings,
    InvalidValueError,
    Key,
    injection_enabled,
    key_prefix,
    parse_settings,
    qualified,
)
from podckpt.operator.domain import gpu, sizing
from podckpt.operator.domain.identity import Identity, WorkloadKind, resolve_identity
from podckpt.operator.settings import OperatorSettings

from . import security as sec
from .argv import needs_image
from .reserved_names import BUNDLE_INIT_CONTAINER, RESERVED_CONTAINER_PREFIX, RESERVED_VOLUMES
from .transparency import ContainerDenied, ContainerNeeds, plan_containers


class Mode(enum.StrEnum):
    #: Checkpointing is on at creation.
    ACTIVE = "active"
    #: The namespace asked for injection; the agent sleeps until the pod's label turns it on.
    DORMANT = "dormant"


class DeniedError(Exception):
    """The pod must be refused; the message is shown to the user by kubectl."""


@dataclasses.dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)


#: The reason of a `Skip` when neither the pod nor its namespace asks for checkpointing.
NOT_ENABLED = "checkpointing is not enabled for this pod"


@dataclasses.dataclass(frozen=True)
class Skip:
    """The pod is admitted unchanged; `reason` goes to the log, `warnings` to kubectl."""

    reason: str
    warnings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `inject.build()` will do to a pod that is injected."""

    mode: Mode
    settings: CheckpointSettings
    containers: tuple[str, ...]
    identity: Identity
    #: Containers whose argv must be read from their image (name -> image reference).
    images: Mapping[str, str]
    warnings: tuple[str, ...]
    #: Limits raised by podckpt's own footprint (bundle emptyDir, agent and CRIU memory).
    raises: tuple[sizing.Raise, ...] = ()
    #: Bytes of one GPU of the pod (domain/gpu.py); 0 when no checkpointed container has one.
    gpu_memory: int = 0
    #: The namespace's keys (labels, annotations under the key prefix), handed to the agent:
    #: it cannot read the Namespace, and they are its defaults below the pod's own keys.
    namespace_keys: tuple[Mapping[str, str], Mapping[str, str]] = ({}, {})
    #: The warnings that are the user's mistakes (unknown or ignored keys, a Pod Security
    #: level that refuses the pod), also reported on the pod's workload.
    mistakes: tuple[str, ...] = ()
    #: Per container: its own settings (MMC_* variables), isolation and added capabilities.
    needs: Mapping[str, ContainerNeeds] = dataclasses.field(default_factory=dict)


def _meta(pod: Mapping[str, Any], field: str) -> dict[str, str]:
    return dict(pod.get("metadata", {}).get(field) or {})


def is_injected(pod: Mapping[str, Any], op: OperatorSettings) -> bool:
    if op.annotation("injected") in _meta(pod, "annotations"):
        return True
    inits = pod.get("spec", {}).get("initContainers") or ()
    return any(c.get("name") == BUNDLE_INIT_CONTAINER for c in inits)


def plan(pod: Mapping[str, Any], namespace: Namespace, op: OperatorSettings) -> Plan | Skip:
    """Decide whether and how to inject. Raises `DeniedError` for a bad pod."""
    # should-inject
    if namespace.name in op.excluded_namespaces or namespace.name == op.operator_namespace:
        return Skip(f"namespace {namespace.name} is never injected")
    if is_injected(pod, op):
        return Skip("already injected")
    reserved = sorted(
        k
        for k in (*_meta(pod, "labels"), *_meta(pod, "annotations"))
        if k.startswith(op.domain + "/")
    )
    if reserved:
        raise DeniedError(
            f"{', '.join(reserved)}: {op.domain}/* labels and annotations are set by podckpt"
            " only; remove them from the pod"
        )

    # parse
    labels, annotations = _meta(pod, "labels"), _meta(pod, "annotations")
    try:
        settings = parse_settings(
            labels,
            annotations,
            namespace_labels=namespace.labels,
            namespace_annotations=namespace.annotations,
        )
        inject_all = injection_enabled(namespace.labels, namespace.annotations)
    except InvalidValueError as exc:
        raise DeniedError(str(exc)) from None
    if settings.mode:
        mode = Mode.ACTIVE
    elif inject_all:
        mode = Mode.DORMANT
    else:
        return Skip(NOT_ENABLED)

    # validate
    spec = pod.get("spec", {})
    containers = [c["name"] for c in spec.get("containers") or ()]
    try:
        selected = settings.selected_containers(containers)
    except InvalidValueError as exc:
        raise DeniedError(str(exc)) from None
    warnings = list(settings.warnings)
    if not selected:
        message = (
            f"{qualified(Key.CHECKPOINT_CONTAINERS)}: no container of this pod is checkpointed"
            f" by default (proxies are excluded); name the containers to checkpoint"
        )
        if mode is Mode.ACTIVE:
            raise DeniedError(message)
        return Skip("no container to checkpoint")

    volume_names = [v.get("name") for v in spec.get("volumes") or ()]
    if settings.storage_volume is not None and settings.storage_volume not in volume_names:
        raise DeniedError(
            str(
                InvalidValueError(
                    qualified(Key.CHECKPOINT_STORAGE_VOLUME),
                    settings.storage_volume,
                    "the name of a volume of this pod: "
                    + (
                        ", ".join(
                            n for n in volume_names if n and not n.startswith("kube-api-access-")
                        )
                        or "(the pod has no volumes)"
                    ),
                )
            )
        )
    try:
        sec.check_reserved_names(spec, RESERVED_VOLUMES, RESERVED_CONTAINER_PREFIX)
    except sec.SecurityDenied as exc:
        raise DeniedError(str(exc)) from None

    identity = resolve_identity(pod)
    if identity.kind is WorkloadKind.POD and settings.storage_volume is None:
        message = (
            f"{qualified(Key.CHECKPOINT_STORAGE_VOLUME)}: required for a pod that no"
            " StatefulSet, Deployment, ReplicaSet or Job controls (nothing would recreate it"
            " to restore); allowed: the name of a volume of this pod that outlives it"
        )
        if mode is Mode.ACTIVE:
            raise DeniedError(message)
        return Skip(
            "dormant plain pod without a storage volume",
            (
                f"podckpt: this pod cannot be checkpointed later: it has no"
                f" {qualified(Key.CHECKPOINT_STORAGE_VOLUME)}",
            ),
        )
    owner_kind = next(
        (r.get("kind") for r in pod.get("metadata", {}).get("ownerReferences") or () if r),
        None,
    )
    if identity.kind is WorkloadKind.POD and owner_kind:
        warnings.append(
            f"podckpt: pods of a {owner_kind} have no stable identity; checkpoints are kept"
            " per pod name on the storage volume"
        )

    try:
        needs = plan_containers(spec, selected, settings)
    except ContainerDenied as exc:
        raise DeniedError(str(exc)) from None
    for item in needs.values():
        warnings += item.warnings

    by_name = {c["name"]: c for c in spec.get("containers") or ()}
    images = {
        name: by_name[name].get("image", "") for name in selected if needs_image(by_name[name])
    }
    mistakes = list(settings.warnings)
    refusal = sec.pod_security_refusal(namespace.name, namespace.labels, selected)
    if refusal is not None:
        if mode is Mode.ACTIVE:
            raise DeniedError(refusal)
        return Skip("the namespace's Pod Security level refuses injected pods", (refusal,))
    checkpointed = [by_name[name] for name in selected]
    per_gpu = gpu.pod_gpu_memory(
        spec, checkpointed, settings.gpu_memory, op.assumed_gpu_memory_bytes
    )
    memory = sizing.checkpointed_memory(
        checkpointed, op.assumed_memory_bytes, gpu_memory=per_gpu.bytes if per_gpu else 0
    )
    if memory.unlimited:
        assumed = sizing.format_bytes(op.assumed_memory_bytes)
        warnings.append(
            f"podckpt: no memory limit on container(s) {', '.join(memory.unlimited)}; the grace"
            f" period and volume size assume {assumed} each"
            + (" plus their GPUs' memory" if memory.gpu else "")
        )
    raises = sizing.footprint_raises(
        spec, selected, bundle_bytes=op.bundle_volume_bytes, agent_bytes=op.agent_memory_bytes
    )
    warnings += [f"podckpt: {r.describe()}" for r in raises]
    if per_gpu is not None:
        warnings.extend(_gpu_warnings(checkpointed, per_gpu))
    prefix = key_prefix()
    namespace_keys = (
        {k: v for k, v in namespace.labels.items() if k.startswith(prefix)},
        {k: v for k, v in namespace.annotations.items() if k.startswith(prefix)},
    )
    return Plan(
        mode,
        settings,
        selected,
        identity,
        images,
        tuple(warnings),
        tuple(raises),
        gpu_memory=per_gpu.bytes if per_gpu else 0,
        namespace_keys=namespace_keys,
        mistakes=tuple(mistakes),
        needs=needs,
    )


def _gpu_warnings(containers: list[Mapping[str, Any]], per_gpu: gpu.GpuMemory) -> list[str]:
    """A checkpoint copies GPU memory into the container's memory (the CUDA driver's
    checkpoint, before CRIU): a memory limit smaller than the GPUs' memory makes it fail."""
    warnings = []
    size = sizing.format_bytes(per_gpu.bytes)
    if not per_gpu.known:
        warnings.append(
            f"podckpt: the pod's GPU model is unknown (no {gpu.PRODUCT_LABEL} node selector or"
            f" affinity, no {qualified(Key.GPU_MEMORY)}); the grace period and volume size"
            f" assume {size} per GPU"
        )
    for container in containers:
        count = gpu.gpu_count(container)
        limit = sizing.memory_limit(container)
        if count and limit is not None and limit < count * per_gpu.bytes:
            warnings.append(
                f"podckpt: container {container['name']}: its memory limit"
                f" {sizing.format_bytes(limit)} cannot hold the memory of its {count} GPU(s)"
                f" ({count}x {size}, {per_gpu.source}) during a checkpoint, which copies GPU"
                " memory into the container's memory: the checkpoint fails when more GPU memory"
                " is in use than the limit leaves; raise the limit"
            )
    return warnings
