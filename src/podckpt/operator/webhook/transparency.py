"""What one checkpointed container asked of CRIU, and the privilege it costs (pure).

Per container, at admission:

- its `MMC_*` variables (literal values of the spec; podckpt.api.for_container) win over the
  pod's keys; a refused CRIU option denies the pod, naming the container, the variable and
  the allowlist; a variable from a ConfigMap/Secret is checked by the agent at start;
- `tcp-established` (pod key or variable) adds CAP_NET_ADMIN to that container, and
  `link-remap` CAP_DAC_READ_SEARCH (podckpt.api.criuopts: each option's capability);
- `checkpoint-ipc-namespace` is resolved: `private` always, `auto` only where it costs
  nothing and changes nothing for anyone else (the container is the pod's only one and holds
  CAP_SYS_ADMIN already, or gets it for `checkpoint-io-uring: deny`), `pod` never; the
  decision goes to the agent in `PODCKPT_IPC_NAMESPACE`;
- `checkpoint-io-uring: deny` goes to the agent in `PODCKPT_IO_URING`;
- an own IPC namespace or the io_uring filter adds CAP_SYS_ADMIN.

Each added capability comes back to kubectl as an admission warning saying why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from podckpt.api import (
    CheckpointSettings,
    InvalidValueError,
    IoUring,
    IpcNamespace,
    Key,
    contract,
    for_container,
    qualified,
)
from podckpt.api.container import literal_env
from podckpt.api.criuopts import capabilities_for, option_name

_SYS_ADMIN = contract.kubernetes_capability(contract.ISOLATION_CAPABILITIES[0])
_OPTION_NOTES = {
    "tcp-established": "; connections are kept only where the pod's IP comes back, else they"
    " are closed at restore (Event ConnectionsClosed)",
    "link-remap": " (CRIU links the unlinked file with linkat(AT_EMPTY_PATH))",
}


class ContainerDenied(ValueError):
    """A container's own setting is refused; the message names the container."""


@dataclasses.dataclass(frozen=True)
class ContainerNeeds:
    name: str
    #: The container's effective settings (the pod's keys, then its MMC_* variables).
    settings: CheckpointSettings
    private_ipc: bool
    deny_io_uring: bool
    #: Capabilities to add for what it asked (Kubernetes spelling: NET_ADMIN, SYS_ADMIN).
    capabilities: tuple[str, ...]
    warnings: tuple[str, ...]

    def env(self) -> list[dict[str, str]]:
        """The hand-over to the agent (`podckpt.api.contract.Env`)."""
        out = []
        if self.private_ipc or self.settings.ipc_namespace is not IpcNamespace.AUTO:
            value = IpcNamespace.PRIVATE if self.private_ipc else IpcNamespace.POD
            out.append({"name": contract.Env.IPC_NAMESPACE, "value": value.value})
        if self.deny_io_uring:
            out.append({"name": contract.Env.IO_URING, "value": IoUring.DENY.value})
        return out


def _holds_sys_admin(container: Mapping[str, Any]) -> bool:
    security = container.get("securityContext") or {}
    if security.get("privileged"):
        return True
    added = (security.get("capabilities") or {}).get("add") or ()
    return any(str(c).removeprefix("CAP_") in ("SYS_ADMIN", "ALL") for c in added)


def pod_containers(spec: Mapping[str, Any]) -> int:
    """Containers that run beside each other for the pod's life: the app containers and the
    native sidecars (init containers with `restartPolicy: Always`)."""
    sidecars = [c for c in spec.get("initContainers") or () if c.get("restartPolicy") == "Always"]
    return len(spec.get("containers") or ()) + len(sidecars)


def container_needs(
    container: Mapping[str, Any], pod_settings: CheckpointSettings, *, alone: bool
) -> ContainerNeeds:
    """Raises ContainerDenied naming the container and what is wrong."""
    name = str(container.get("name", ""))
    literal, indirect = literal_env(container)
    try:
        settings = for_container(pod_settings, literal)
    except InvalidValueError as exc:
        raise ContainerDenied(f"container {name!r}: {exc}") from None
    warnings = [
        f"podckpt: container {name!r}: {w}" for w in settings.warnings[len(pod_settings.warnings) :]
    ]
    if indirect:
        warnings.append(
            f"podckpt: container {name!r}: {', '.join(indirect)} may come from a ConfigMap,"
            " Secret or field reference; the agent checks it at start (a refused value stops"
            " the container with exit code 200)"
        )
    capabilities: list[str] = []
    options = tuple(dict.fromkeys((*settings.checkpoint_options, *settings.restore_options)))
    for option in options:
        for cap in capabilities_for((option,)):
            capabilities.append(contract.kubernetes_capability(cap))
            warnings.append(
                f"podckpt: container {name!r}: CRIU option {option_name(option)} adds"
                f" capability {contract.kubernetes_capability(cap)}"
                + _OPTION_NOTES.get(option_name(option), "")
            )
    deny_io_uring = settings.io_uring is IoUring.DENY
    sys_admin_anyway = _holds_sys_admin(container) or deny_io_uring
    match settings.ipc_namespace:
        case IpcNamespace.PRIVATE:
            private_ipc = True
        case IpcNamespace.AUTO:
            private_ipc = alone and sys_admin_anyway
        case _:
            private_ipc = False
    if deny_io_uring:
        warnings.append(
            f"podckpt: container {name!r}: io_uring_setup fails with ENOSYS for the application"
            f" ({qualified(Key.CHECKPOINT_IO_URING)}: deny) so that its runtime uses epoll; adds"
            f" capability {_SYS_ADMIN} (CRIU must suspend the application's seccomp filter to"
            " dump it)"
        )
    if private_ipc:
        warnings.append(
            f"podckpt: container {name!r}: its application gets an IPC namespace of its own"
            f" ({qualified(Key.CHECKPOINT_IPC_NAMESPACE)}), so that CRIU saves its System V"
            f" shared memory, semaphores and message queues; adds capability {_SYS_ADMIN};"
            " other containers of the pod no longer see its System V IPC objects"
        )
    if (private_ipc or deny_io_uring) and not _holds_sys_admin(container):
        capabilities.append(_SYS_ADMIN)
    return ContainerNeeds(
        name,
        settings,
        private_ipc,
        deny_io_uring,
        tuple(dict.fromkeys(capabilities)),
        tuple(warnings),
    )


def plan_containers(
    spec: Mapping[str, Any], selected: Sequence[str], pod_settings: CheckpointSettings
) -> dict[str, ContainerNeeds]:
    """`container_needs` of each selected container. Raises ContainerDenied."""
    alone = pod_containers(spec) == 1
    by_name = {c["name"]: c for c in spec.get("containers") or ()}
    return {n: container_needs(by_name[n], pod_settings, alone=alone) for n in selected}
