"""The admission pipeline, as pure functions: should-inject -> parse -> validate -> build -> patch.

`plan()` decides whether and how a new pod is injected, from the pod and its namespace only.
The handler then resolves what needs the outside world (image configs, the Deployment slot) and
`build()` rewrites a copy of the pod. The patch returned to the apiserver is the diff of the
original and the rewritten pod (`make_patch`), never hand-written operations.

Nothing here talks to the API server or a registry, so every rule has a unit test.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from podckpt.api import (
    DEFAULT_PREFIX,
    CheckpointSettings,
    InvalidValueError,
    Key,
    contract,
    injection_enabled,
    key_prefix,
    parse_settings,
    qualified,
)
from podckpt.operator.domain import gpu, reserved, sizing
from podckpt.operator.domain.identity import Identity, WorkloadKind, resolve_identity
from podckpt.operator.domain.revision import revision as workload_revision
from podckpt.operator.domain.slots import SlotChoice
from podckpt.operator.settings import OperatorSettings

from . import security as sec
from .argv import ImageArgv, escape_expansion, needs_image, original_argv
from .review import diff
from .transparency import ContainerDenied, ContainerNeeds, plan_containers

Pod = dict[str, Any]

#: Version of the injection format, stored in the `<domain>/injected` annotation.
INJECTION_VERSION = "v1"

BUNDLE_VOLUME = "podckpt-bundle"
META_VOLUME = "podckpt-meta"
STORE_VOLUME = reserved.STORE_VOLUME  # the controller checks for it
#: The namespace's store key Secret, mounted into the bundle init container only.
STORE_KEY_VOLUME = "podckpt-store-key"
STORE_KEY_SECRET_MOUNT = "/podckpt-store-key"  # noqa: S105 - a path
#: The agents' run directories (one subPath per container) and the user probes' answers.
RUN_VOLUME = "podckpt-run"
USER_VOLUME = "podckpt-user"
RESERVED_VOLUMES = (
    BUNDLE_VOLUME,
    META_VOLUME,
    STORE_VOLUME,
    STORE_KEY_VOLUME,
    RUN_VOLUME,
    USER_VOLUME,
)
BUNDLE_INIT_CONTAINER = "podckpt-bundle"
#: Names of podckpt's own init containers start with this.
RESERVED_CONTAINER_PREFIX = "podckpt-"
POD_NAME_ENV = contract.Env.POD_NAME


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
    """What `build()` will do to a pod that is injected."""

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


def store_key(identity: Identity) -> str:
    """The identity's directory on the volume. A plain pod whose name is generated by the
    apiserver refers to it through the kubelet's `$(VAR)` expansion."""
    if identity.kind is WorkloadKind.POD and not identity.workload:
        return f"pod-$({POD_NAME_ENV})"
    return identity.key


def build(
    pod: Mapping[str, Any],
    plan: Plan,
    images: Mapping[str, ImageArgv],
    op: OperatorSettings,
    *,
    slot: SlotChoice | None = None,
    gate: bool = False,
    measured_bytes_per_second: int | None = None,
) -> Pod:
    """The rewritten pod (see `build_with_warnings`)."""
    return build_with_warnings(
        pod,
        plan,
        images,
        op,
        slot=slot,
        gate=gate,
        measured_bytes_per_second=measured_bytes_per_second,
    )[0]


def build_with_warnings(
    pod: Mapping[str, Any],
    plan: Plan,
    images: Mapping[str, ImageArgv],
    op: OperatorSettings,
    *,
    slot: SlotChoice | None = None,
    gate: bool = False,
    measured_bytes_per_second: int | None = None,
) -> tuple[Pod, list[str]]:
    """The rewritten pod and what the user is told about it. `images` holds the config of
    every image in `plan.images`; `slot` (the slot and its pod name) is required for
    Deployment and ReplicaSet pods; `gate`: the pod waits for its checkpoint volume (a
    scheduling gate the controller removes); `measured_bytes_per_second`: the dump throughput
    the agent measured on this identity's volume (`sizing.MEASURED_THROUGHPUT`), used for the
    grace period instead of the assumed one. Raises DeniedError where the pod's security
    settings cannot be kept."""
    new: Pod = copy.deepcopy(dict(pod))
    meta = new.setdefault("metadata", {})
    spec = new.setdefault("spec", {})
    identity = plan.identity
    if identity.needs_slot:
        if slot is None:
            raise ValueError("a Deployment or ReplicaSet pod needs a slot")
        identity = identity.with_slot(slot.slot)
        meta["name"] = slot.name
        labels = meta.setdefault("labels", {})
        labels[op.annotation("slot-group")] = identity.slot_group
        labels[op.annotation("slot")] = str(slot.slot)

    storage_volume = plan.settings.storage_volume
    annotations = meta.setdefault("annotations", {})
    annotations[op.annotation("injected")] = INJECTION_VERSION
    annotations[op.annotation("mode")] = plan.mode.value
    annotations[op.annotation("identity")] = identity.encode()
    annotations[op.annotation("containers")] = ",".join(plan.containers)
    if storage_volume is None:
        annotations[op.annotation("claim")] = identity.claim_name
        store_volume = STORE_VOLUME
    else:
        store_volume = storage_volume

    volumes = spec.setdefault("volumes", [])
    volumes.append(
        {
            "name": BUNDLE_VOLUME,
            "emptyDir": {"sizeLimit": sizing.format_bytes(op.bundle_volume_bytes)},
        }
    )
    volumes.append(
        {
            "name": META_VOLUME,
            "downwardAPI": {
                "items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                ]
            },
        }
    )
    if storage_volume is None:
        volumes.append(
            {"name": STORE_VOLUME, "persistentVolumeClaim": {"claimName": identity.claim_name}}
        )
    if op.store_key_secret:
        # Not optional: a pod waits (ContainerCreating) until the controller has created the
        # namespace's key, rather than run with checkpoints nobody can authenticate.
        volumes.append(
            {
                "name": STORE_KEY_VOLUME,
                "secret": {
                    "secretName": op.store_key_secret,
                    "items": [{"key": contract.STORE_KEY_SECRET_KEY, "path": "key", "mode": 0o400}],
                    "defaultMode": 0o400,
                },
            }
        )

    if gate and storage_volume is None:
        spec.setdefault("schedulingGates", []).append({"name": op.gate_name})
    volumes.append({"name": RUN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}})

    key = store_key(identity)
    # From the pod as submitted: podckpt's rewrite is no part of the user's revision.
    revisions = {
        c["name"]: workload_revision(pod, c)
        for c in (pod.get("spec") or {}).get("containers") or ()
        if c.get("name") in plan.containers
    }
    probes: list[dict[str, Any]] = []
    warnings: list[str] = []
    for container in spec.get("containers") or ():
        if container["name"] not in plan.containers:
            continue
        image = images.get(container["name"])
        try:
            user = sec.user_plan(container, spec, image)
        except sec.SecurityDenied as exc:
            raise DeniedError(f"podckpt: {exc}") from None
        if user.probe:
            probes.append(
                sec.probe_container(
                    container, len(probes), bundle_volume=BUNDLE_VOLUME, user_volume=USER_VOLUME
                )
            )
        secured = _wrap(
            container,
            image=image,
            user=user,
            revision=revisions[container["name"]],
            namespace_keys=plan.namespace_keys,
            store_key=key,
            store_volume=store_volume,
            spec=spec,
            op=op,
            needs=plan.needs.get(container["name"]),
        )
        warnings.append(secured.warning(container["name"]))
    if probes:
        volumes.append({"name": USER_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}})
    spec.setdefault("initContainers", [])[0:0] = [_bundle_init_container(op), *probes]

    memory = sizing.checkpointed_memory(
        (c for c in spec.get("containers") or () if c["name"] in plan.containers),
        op.assumed_memory_bytes,
        gpu_memory=plan.gpu_memory,
    )
    for item in plan.raises:
        sizing.apply_raise(spec, item)
    grace = sizing.grace_period_seconds(
        memory.total,
        bytes_per_second=measured_bytes_per_second or op.dump_bytes_per_second,
        base_seconds=op.grace_base_seconds,
        gpu_bytes=memory.gpu,
        gpu_bytes_per_second=op.gpu_copy_bytes_per_second,
    )
    final = max(int(spec.get("terminationGracePeriodSeconds") or 30), grace)
    spec["terminationGracePeriodSeconds"] = final
    # The agent's deadline: it does not start a dump that cannot finish before SIGKILL.
    for container in spec.get("containers") or ():
        if container["name"] in plan.containers:
            container["env"].append({"name": contract.Env.GRACE_PERIOD, "value": str(final)})
    if measured_bytes_per_second:
        annotations[op.annotation(sizing.MEASURED_THROUGHPUT)] = str(measured_bytes_per_second)
    return new, warnings


def _bundle_init_container(op: OperatorSettings) -> dict[str, Any]:
    """Copies the bundle into the emptyDir and, with a store key, the key beside it (0400 in
    a 0700 directory, root's: `podckpt-agent install --key`). Only this container mounts the
    Secret: with an fsGroup, the kubelet makes a Secret volume group-readable (0440), which
    a non-root application in that group could read."""
    command = list(op.bundle_install_command)
    mounts: list[dict[str, Any]] = [{"name": BUNDLE_VOLUME, "mountPath": op.bundle_install_target}]
    if op.store_key_secret:
        command += ["--key", f"{STORE_KEY_SECRET_MOUNT}/key"]
        mounts.append(
            {"name": STORE_KEY_VOLUME, "mountPath": STORE_KEY_SECRET_MOUNT, "readOnly": True}
        )
    return {
        "name": BUNDLE_INIT_CONTAINER,
        "image": op.bundle_image,
        "imagePullPolicy": op.bundle_image_pull_policy,
        "command": command,
        "volumeMounts": mounts,
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"memory": "128Mi"},
        },
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _wrap(
    container: dict[str, Any],
    *,
    image: ImageArgv | None,
    revision: str,
    namespace_keys: tuple[Mapping[str, str], Mapping[str, str]],
    user: sec.AppUserPlan,
    store_key: str,
    store_volume: str,
    spec: Mapping[str, Any],
    op: OperatorSettings,
    needs: ContainerNeeds | None = None,
) -> sec.Secured:
    name = container["name"]
    defaults = None
    if namespace_keys[0] or namespace_keys[1]:
        # JSON in `command`: the kubelet would expand `$(VAR)` in it, `$$` is a `$`.
        defaults = escape_expansion(contract.namespace_defaults_text(*namespace_keys))
    # Only what this container asked for beyond that: tcp-established (NET_ADMIN), an own IPC
    # namespace or the io_uring filter (SYS_ADMIN): webhook/transparency.py.
    extra = ["CAP_" + c.removeprefix("CAP_") for c in needs.capabilities] if needs else []
    needed = sec.needed_capabilities(user, extra, base=op.agent_capabilities)
    secured = sec.secure(container, spec, user, needed)
    run = contract.RunCommand(
        argv=tuple(original_argv(container, image)),
        store=f"{contract.STORE_MOUNT}/{store_key}/{name}",
        container=name,
        labels_file=contract.LABELS_FILE,
        annotations_file=contract.ANNOTATIONS_FILE,
        revision=revision,
        namespace_defaults=defaults,
        user=user.user,
        user_probe=contract.user_probe_file(name) if user.probe else None,
        groups=user.groups,
        strict_groups=user.strict_groups,
        non_root=user.non_root,
        drop_capabilities=secured.drop_for_app,
    )
    container["command"], container["args"] = run.container_command()

    mounts = container.setdefault("volumeMounts", [])
    mounts.append({"name": BUNDLE_VOLUME, "mountPath": contract.BUNDLE_MOUNT, "readOnly": True})
    mounts.append({"name": META_VOLUME, "mountPath": contract.META_MOUNT, "readOnly": True})
    mounts.append({"name": store_volume, "mountPath": contract.STORE_MOUNT})
    # Its own subdirectory only: no other container sees this agent's control socket.
    mounts.append({"name": RUN_VOLUME, "mountPath": contract.RUN_MOUNT, "subPath": name})
    if user.probe:
        mounts.append({"name": USER_VOLUME, "mountPath": contract.USER_MOUNT, "readOnly": True})

    ours = set(contract.AGENT_ENV)
    env = [e for e in container.get("env") or () if e.get("name") not in ours]
    if f"$({POD_NAME_ENV})" in store_key:
        # The kubelet expands $(PODCKPT_POD_NAME) in the store path of a plain pod whose name
        # the apiserver generates; the agent removes the variable from the application's env.
        env.append(
            {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
        )
    # A checkpoint is restored only into a container of the same image and argv, and never
    # into the pod that made it (a container restarted inside its pod starts fresh).
    env.append({"name": contract.Env.IMAGE, "value": str(container.get("image", ""))})
    if op.store_key_secret:
        env.append({"name": contract.Env.STORE_KEY, "value": contract.STORE_KEY_FILE})
        if op.store_accept_unsigned:
            env.append({"name": contract.Env.STORE_ACCEPT_UNSIGNED, "value": "true"})
    env.append(
        {"name": contract.Env.POD_UID, "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}
    )
    if key_prefix() != DEFAULT_PREFIX:
        # The agent reads the pod's keys under the installation's prefix too.
        env.append({"name": contract.Env.KEY_PREFIX, "value": key_prefix()})
    if needs is not None:
        env += needs.env()
    container["env"] = env
    return secured


def make_patch(original: Mapping[str, Any], mutated: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JSON patch from `original` to `mutated` (a structural diff, see `review.diff`)."""
    return diff(original, mutated)
