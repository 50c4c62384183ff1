"""The agent's environment variables, and the promise that none of them reaches the
application (`podckpt.api.contract`, "Environment")."""

from __future__ import annotations

import enum
from collections.abc import Mapping

from ..keys import PREFIX_ENV


class Env(enum.StrEnum):
    """Variables of the agent (set by the webhook, the bundle's launcher or a developer)."""

    #: Set by the bundle's launcher: the bundle's directory (CRIU, helpers).
    BUNDLE = "PODCKPT_BUNDLE"
    #: A CRIU binary to use instead of the bundle's (tests, development).
    CRIU = "PODCKPT_CRIU"
    #: Defaults of `--store` and `--container` when the agent is run by hand.
    STORE = "PODCKPT_STORE"
    CONTAINER = "PODCKPT_CONTAINER"
    #: Webhook, plain pods with a generated name only: `metadata.name`, which the kubelet
    #: expands in `--store .../pod-$(PODCKPT_POD_NAME)/...`.
    POD_NAME = "PODCKPT_POD_NAME"
    #: Webhook: the container's image reference; a checkpoint is restored only into the same.
    IMAGE = "PODCKPT_IMAGE"
    #: Webhook (downward API, `metadata.uid`; unknown at admission): the pod's uid. A
    #: checkpoint is never restored into the pod that made it: a container restarted inside
    #: its pod (liveness probe, OOM kill, crash) starts fresh.
    POD_UID = "PODCKPT_POD_UID"
    #: The key prefix when it is not `memverge.ai/` (read by `podckpt.api.keys`).
    KEY_PREFIX = PREFIX_ENV
    #: Where the last phase lines go for the kubelet (tests point it elsewhere).
    TERMINATION_LOG = "PODCKPT_TERMINATION_LOG"
    #: Webhook: the file holding the namespace's store key (`STORE_KEY_FILE`): manifests are
    #: signed and verified with it (HMAC-SHA256, docs/security.md). Unset: no HMAC.
    STORE_KEY = "PODCKPT_STORE_KEY"
    #: Webhook (operator setting): "true" restores podckpt 0.1.0 checkpoints, which carry no
    #: HMAC, although a store key is set: for the upgrade from 0.1.0 only (docs/upgrade.md).
    STORE_ACCEPT_UNSIGNED = "PODCKPT_STORE_ACCEPT_UNSIGNED"
    #: Seconds the CUDA driver's lock may wait for CUDA calls in flight (default 10).
    GPU_LOCK_TIMEOUT = "PODCKPT_GPU_LOCK_TIMEOUT_S"
    #: Webhook: the pod's `terminationGracePeriodSeconds` (as the webhook set it). At SIGTERM
    #: the agent does not start a dump that cannot finish before the kubelet's SIGKILL; it
    #: forwards SIGTERM at once instead (docs/agent.md "The deadline").
    GRACE_PERIOD = "PODCKPT_GRACE_PERIOD_SECONDS"
    #: Webhook: `private` when the application gets an IPC namespace of its own (the pod's
    #: `checkpoint-ipc-namespace`, its namespace default, or `auto` resolved by the webhook,
    #: which alone sees whether the container is alone in its pod); `pod` otherwise.
    IPC_NAMESPACE = "PODCKPT_IPC_NAMESPACE"
    #: Webhook: `deny` when io_uring_setup must fail for the application (`checkpoint-io-uring`).
    IO_URING = "PODCKPT_IO_URING"
    #: Default of `--control-socket` (tests, development).
    CONTROL_SOCKET = "PODCKPT_CONTROL_SOCKET"


#: Removed from the application's environment: none of ours reaches the application.
AGENT_ENV: frozenset[str] = frozenset(Env)


def application_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without the agent's variables."""
    return {k: v for k, v in environ.items() if k not in AGENT_ENV}
