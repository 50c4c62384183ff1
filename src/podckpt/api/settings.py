"""The keys of a pod, parsed once into a frozen object that the webhook, the controller and the
agent all trust.

Precedence, highest first: the pod's annotation, the pod's label, the namespace's annotation,
the namespace's label, the built-in default. An annotation beats a label of the same key because
only annotations can hold lists of paths; a pod beats its namespace because the namespace only
sets defaults.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence

from . import criuopts, values
from .errors import InvalidValueError
from .keys import DEFAULT_EXCLUDED_CONTAINERS, Key, NamespaceKey, key_prefix


class RestorePolicy(enum.StrEnum):
    """What a new container does with the checkpoints of its identity."""

    #: Restore the newest usable generation, older ones if it fails, else start fresh.
    LATEST = "latest"
    #: Never restore; always start the application fresh (checkpoints are still taken).
    FRESH = "fresh"
    #: Restore the newest generation or fail the container: never silently start fresh.
    STRICT = "strict"


class RestoreMode(enum.StrEnum):
    """How a restore brings the application's memory back."""

    #: The application runs as soon as its processes are rebuilt; its memory follows on
    #: demand and in the background (CRIU lazy-pages, userfaultfd). Needs CRIU's privileged
    #: capabilities and CAP_SYS_PTRACE in the container (docs/agent.md, "Lazy restore").
    LAZY = "lazy"
    #: The application runs once all of its memory is back.
    FULL = "full"


class IpcNamespace(enum.StrEnum):
    """Which System V IPC namespace the application lives in (`checkpoint-ipc-namespace`).

    CRIU saves SysV shared memory, semaphores and message queues only together with an IPC
    namespace of the dumped tree's own; a container shares its pod's. An own namespace needs
    CAP_SYS_ADMIN (to unshare it, and for CRIU to recreate it)."""

    #: Own namespace when that costs nothing: the container already holds CAP_SYS_ADMIN and
    #: is the pod's only container (nobody else could share SysV objects with it).
    AUTO = "auto"
    #: Always an own namespace: the webhook adds CAP_SYS_ADMIN.
    PRIVATE = "private"
    #: Always the pod's namespace (SysV objects make the checkpoint fail).
    POD = "pod"


class IoUring(enum.StrEnum):
    """Whether the application may create io_uring instances (`checkpoint-io-uring`).

    CRIU cannot dump an io_uring instance. `deny` makes `io_uring_setup` fail with ENOSYS for
    the application only (a seccomp filter the agent installs on it, as container runtimes'
    default profiles do), so event-loop runtimes fall back to epoll; dumping a process under
    a seccomp filter needs CAP_SYS_ADMIN, which the webhook then adds."""

    ALLOW = "allow"
    DENY = "deny"


class Source(enum.StrEnum):
    """Where a key's effective value came from; reported in warnings and agent logs."""

    POD_ANNOTATION = "pod annotation"
    POD_LABEL = "pod label"
    NAMESPACE_ANNOTATION = "namespace annotation"
    NAMESPACE_LABEL = "namespace label"
    #: A container's own `MMC_*` variable (it wins over the pod's key for that container).
    CONTAINER_ENV = "container environment"


DEFAULT_KEEP = 2
MAX_KEEP = 100


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    """Effective settings of one pod. Field defaults are the documented defaults."""

    mode: bool = False
    #: Names from `checkpoint-containers`; None means the default selection.
    containers: tuple[str, ...] | None = None
    storage_volume: str | None = None
    storage_class: str | None = None
    #: Bytes of `checkpoint-volume-size`; None means sized from the memory limits.
    volume_size: int | None = None
    files: tuple[str, ...] = ()
    irmap_scan_paths: tuple[str, ...] = ()
    diagnosis: bool = False
    #: Seconds between periodic checkpoints; None means only on SIGTERM.
    interval: float | None = None
    keep: int = DEFAULT_KEEP
    restore_policy: RestorePolicy = RestorePolicy.LATEST
    #: Bytes of `gpu-memory` (memory of one GPU); None means from the GPU model, or assumed.
    gpu_memory: int | None = None
    #: None: the agent chooses (lazy for large checkpoints when the container allows it).
    restore_mode: RestoreMode | None = None
    #: CRIU options for the dump and for the restore (canonical, see criuopts).
    checkpoint_options: tuple[str, ...] = ()
    restore_options: tuple[str, ...] = ()
    ipc_namespace: IpcNamespace = IpcNamespace.AUTO
    io_uring: IoUring = IoUring.ALLOW
    #: Where each explicitly given key came from.
    sources: Mapping[Key, Source] = dataclasses.field(default_factory=dict)
    #: Soft problems: keys ignored because another key or source wins.
    warnings: tuple[str, ...] = ()

    def selected_containers(self, container_names: Sequence[str]) -> tuple[str, ...]:
        """The containers to checkpoint, in pod order.

        An explicit list must name existing containers: a typo would otherwise silently
        leave a container without checkpoints.
        """
        if self.containers is None:
            return tuple(n for n in container_names if n not in DEFAULT_EXCLUDED_CONTAINERS)
        unknown = [n for n in self.containers if n not in container_names]
        if unknown:
            raise InvalidValueError(
                key_prefix() + Key.CHECKPOINT_CONTAINERS,
                ",".join(self.containers),
                "names of containers of this pod: " + ", ".join(container_names),
            )
        return tuple(n for n in container_names if n in self.containers)


@dataclasses.dataclass(frozen=True)
class _Raw:
    value: str
    source: Source


def _lookup(
    key: str, layers: Sequence[tuple[Source, Mapping[str, str]]], warnings: list[str]
) -> _Raw | None:
    """The highest-precedence value of `key`, warning when a same-level label is overridden."""
    found = [(source, layer[key]) for source, layer in layers if key in layer]
    if not found:
        return None
    source, value = found[0]
    if len(found) > 1:
        runner_source, runner_value = found[1]
        same_object = source.split()[0] == runner_source.split()[0]
        if same_object and runner_value != value:
            warnings.append(
                f"{key}: {runner_source} value {runner_value!r} is ignored; "
                f"the {source} value {value!r} wins"
            )
    return _Raw(value, source)


def parse_settings(
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    *,
    namespace_labels: Mapping[str, str] | None = None,
    namespace_annotations: Mapping[str, str] | None = None,
    prefix: str | None = None,
) -> CheckpointSettings:
    """Parse every key. Raises `InvalidValueError` on the first bad value, naming its key."""
    prefix = key_prefix() if prefix is None else prefix
    layers: list[tuple[Source, Mapping[str, str]]] = [
        (Source.POD_ANNOTATION, annotations or {}),
        (Source.POD_LABEL, labels or {}),
        (Source.NAMESPACE_ANNOTATION, namespace_annotations or {}),
        (Source.NAMESPACE_LABEL, namespace_labels or {}),
    ]
    warnings: list[str] = []
    sources: dict[Key, Source] = {}
    fields: dict[str, object] = {}

    for key in Key:
        name = prefix + key
        raw = _lookup(name, layers, warnings)
        if raw is None:
            continue
        sources[key] = raw.source
        is_label = raw.source in (Source.POD_LABEL, Source.NAMESPACE_LABEL)
        fields.update(_parse_one(key, name, raw.value, is_label))

    warnings += unknown_keys(layers, prefix)
    if fields.get("storage_volume") is not None:
        for ignored in (Key.CHECKPOINT_STORAGE_CLASS, Key.CHECKPOINT_VOLUME_SIZE):
            if ignored in sources:
                warnings.append(
                    f"{prefix + ignored}: ignored because {prefix + Key.CHECKPOINT_STORAGE_VOLUME}"
                    " is set (checkpoints go to the pod's own volume)"
                )
    return CheckpointSettings(**fields, sources=sources, warnings=tuple(warnings))  # type: ignore[arg-type]


def unknown_keys(layers: Sequence[tuple[Source, Mapping[str, str]]], prefix: str) -> list[str]:
    """A warning for each name under the prefix that is no key (a typo would otherwise be
    ignored in silence), with the nearest known key; namespace keys only count on the
    namespace."""
    pod_keys = {prefix + k for k in Key}
    namespace_keys = pod_keys | {prefix + k for k in NamespaceKey}
    found: list[str] = []
    for source, layer in layers:
        known = namespace_keys if source.startswith("namespace") else pod_keys
        for name in layer:
            if not name.startswith(prefix) or name in known:
                continue
            import difflib  # noqa: PLC0415 - only when a key is unknown

            # compared without the prefix, which every candidate shares
            suffixes = sorted(k.removeprefix(prefix) for k in known)
            nearest = difflib.get_close_matches(name.removeprefix(prefix), suffixes, n=1)
            hint = f"; did you mean {prefix}{nearest[0]}?" if nearest else ""
            if source.startswith("pod") and name in namespace_keys:
                hint = "; it is a namespace key: put it on the Namespace"
            found.append(f"{name}: unknown key ({source}), ignored{hint}")
    return found


def _parse_one(key: Key, name: str, value: str, is_label: bool) -> dict[str, object]:
    match key:
        case Key.CHECKPOINT_MODE:
            return {"mode": values.parse_bool(name, value)}
        case Key.CHECKPOINT_CONTAINERS:
            return {"containers": values.parse_names(name, value, "." if is_label else ",")}
        case Key.CHECKPOINT_STORAGE_VOLUME:
            return {"storage_volume": values.parse_volume_name(name, value)}
        case Key.CHECKPOINT_STORAGE_CLASS:
            return {"storage_class": _parse_storage_class(name, value)}
        case Key.CHECKPOINT_VOLUME_SIZE:
            return {"volume_size": values.parse_quantity(name, value)}
        case Key.CHECKPOINT_FILES:
            return {"files": values.parse_paths(name, value)}
        case Key.IRMAP_SCAN_PATHS:
            return {"irmap_scan_paths": values.parse_paths(name, value)}
        case Key.CHECKPOINT_DIAGNOSIS:
            return {"diagnosis": values.parse_bool(name, value)}
        case Key.CHECKPOINT_INTERVAL:
            return {"interval": values.parse_duration(name, value)}
        case Key.CHECKPOINT_KEEP:
            return {"keep": values.parse_int(name, value, minimum=1, maximum=MAX_KEEP)}
        case Key.RESTORE_POLICY:
            choices = tuple(p.value for p in RestorePolicy)
            return {"restore_policy": RestorePolicy(values.parse_choice(name, value, choices))}
        case Key.GPU_MEMORY:
            return {"gpu_memory": values.parse_quantity(name, value)}
        case Key.RESTORE_MODE:
            modes = tuple(m.value for m in RestoreMode)
            return {"restore_mode": RestoreMode(values.parse_choice(name, value, modes))}
        case Key.CHECKPOINT_ADVANCED_OPTIONS:
            return {"checkpoint_options": criuopts.parse_options(name, value, label=is_label)}
        case Key.RESTORE_ADVANCED_OPTIONS:
            return {"restore_options": criuopts.parse_options(name, value, label=is_label)}
        case Key.CHECKPOINT_IPC_NAMESPACE:
            choices = tuple(p.value for p in IpcNamespace)
            return {"ipc_namespace": IpcNamespace(values.parse_choice(name, value, choices))}
        case Key.CHECKPOINT_IO_URING:
            choices = tuple(p.value for p in IoUring)
            return {"io_uring": IoUring(values.parse_choice(name, value, choices))}
    raise AssertionError(f"unhandled key {key}")  # pragma: no cover


def _parse_storage_class(name: str, value: str) -> str:
    """StorageClass names are DNS subdomains (dots allowed), unlike volume names."""
    text = value.strip()
    labels = text.split(".")
    if not text or len(text) > 253 or not all(values.is_dns_label(part) for part in labels):
        raise InvalidValueError(name, value, "the name of a StorageClass (a DNS subdomain)")
    return text


def injection_enabled(
    namespace_labels: Mapping[str, str] | None,
    namespace_annotations: Mapping[str, str] | None = None,
    *,
    prefix: str | None = None,
) -> bool:
    """Whether the namespace asks for the agent in every new pod (dormant until opted in)."""
    prefix = key_prefix() if prefix is None else prefix
    name = prefix + NamespaceKey.CHECKPOINT_INJECTION
    value = (namespace_annotations or {}).get(name, (namespace_labels or {}).get(name))
    if value is None:
        return False
    return values.parse_choice(name, value, ("enabled", "disabled")) == "enabled"
