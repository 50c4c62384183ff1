"""Every user-facing key, named once.

The names are the documented API of the MemVerge Transparent Checkpoint Operator (the first
eight, then the two `*-advanced-options` of its later documentation) plus podckpt's own
extensions. The webhook, the controller and the agent refer to keys only through this module,
so a key is never spelled twice.
"""

from __future__ import annotations

import enum
import os

DEFAULT_PREFIX = "memverge.ai/"
PREFIX_ENV = "PODCKPT_KEY_PREFIX"

#: Containers that are never checkpointed unless `checkpoint-containers` names them: service
#: mesh and proxy sidecars hold connections that must be re-established, not restored.
DEFAULT_EXCLUDED_CONTAINERS: tuple[str, ...] = ("istio-proxy", "nginx-proxy")


class Key(enum.StrEnum):
    """Pod-level keys; each may be a label or an annotation (the annotation wins)."""

    # The documented MemVerge keys.
    CHECKPOINT_MODE = "checkpoint-mode"
    CHECKPOINT_CONTAINERS = "checkpoint-containers"
    CHECKPOINT_STORAGE_VOLUME = "checkpoint-storage-volume"
    CHECKPOINT_STORAGE_CLASS = "checkpoint-storage-class"
    CHECKPOINT_VOLUME_SIZE = "checkpoint-volume-size"
    CHECKPOINT_FILES = "checkpoint-files"
    IRMAP_SCAN_PATHS = "irmap-scan-paths"
    CHECKPOINT_DIAGNOSIS = "checkpoint-diagnosis"
    # podckpt's own keys.
    CHECKPOINT_INTERVAL = "checkpoint-interval"
    CHECKPOINT_KEEP = "checkpoint-keep"
    RESTORE_POLICY = "restore-policy"
    #: Memory of one GPU of the pod (`80Gi`), when its model is not in the operator's table.
    GPU_MEMORY = "gpu-memory"
    #: `lazy` or `full`: how a restore brings the memory back (default: by size, docs/agent.md).
    RESTORE_MODE = "restore-mode"
    # Documented by the product after the user guide: CRIU options per workload.
    CHECKPOINT_ADVANCED_OPTIONS = "checkpoint-advanced-options"
    RESTORE_ADVANCED_OPTIONS = "restore-advanced-options"
    # podckpt's own: what the application is isolated from, so that CRIU can move it.
    CHECKPOINT_IPC_NAMESPACE = "checkpoint-ipc-namespace"
    CHECKPOINT_IO_URING = "checkpoint-io-uring"


class NamespaceKey(enum.StrEnum):
    """Namespace-level keys (label or annotation on the Namespace object)."""

    #: `true`: every new pod in the namespace is checkpointed unless the pod says otherwise.
    #: It is the namespace default of `checkpoint-mode`; the other pod keys may be given on the
    #: namespace too and act as defaults the same way.
    CHECKPOINT_MODE = "checkpoint-mode"
    #: `enabled`: every new pod gets the agent, dormant until its own label turns
    #: checkpointing on (the `istio-injection=enabled` habit).
    CHECKPOINT_INJECTION = "checkpoint-injection"


def key_prefix() -> str:
    """The configured prefix, always ending in `/` so that `prefix + key` is a valid key."""
    prefix = os.environ.get(PREFIX_ENV, DEFAULT_PREFIX)
    return prefix if prefix.endswith("/") else prefix + "/"


def qualified(key: str, prefix: str | None = None) -> str:
    """The full label/annotation name of `key` (e.g. `memverge.ai/checkpoint-mode`)."""
    return (key_prefix() if prefix is None else prefix) + key
