"""What checkpointing costs a container's security, decided in one place (pure).

CRIU runs inside the container, as root, with a few capabilities and without a seccomp
filter; the application must not gain any of that. Per checkpointed container this module
decides:

- **the agent's privileges**: `runAsUser: 0`/`runAsGroup: 0`, `runAsNonRoot: false`, the
  capabilities CRIU needs for what this pod does (`contract.REQUIRED_CAPABILITIES`; the user
  dump set when the application may be non-root; those of CRIU options it asked for), seccomp
  `Unconfined`, never `privileged`; `allowPrivilegeEscalation: false` unless the container
  needs it otherwise (privileged, CAP_SYS_ADMIN added, or the user set it true);
- **the application's user**: the container's `runAsUser`/`runAsGroup` (pod-level as
  fallback), handed to the agent as `--user`; without one the image's `USER` decides, and the
  *user probe* (an init container with the application's image and securityContext, no
  capabilities) finds out what the runtime makes of it (`--user-probe`; docs/security.md says
  why not from the registry). `runAsNonRoot: true` becomes `--non-root`, and admission is
  denied where it visibly cannot hold (runAsUser 0; an image whose USER is root or a name);
- **what the application must not keep**: the capabilities added that the container would not
  have had without podckpt (`--drop-capabilities`);
- **what the user is told**: one warning per container listing exactly what was added and why.

Nothing here talks to the API server or a registry.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from podckpt.api import contract

from .argv import ImageArgv

#: Pod Security Admission's namespace label; any level but `privileged` refuses what CRIU
#: needs (added capabilities, seccomp Unconfined).
POD_SECURITY_ENFORCE = "pod-security.kubernetes.io/enforce"
PRIVILEGED_LEVEL = "privileged"
_KUBELET_REFUSES = "the kubelet would refuse this container too"


class SecurityDenied(Exception):
    """The pod cannot be checkpointed without breaking one of its security settings."""


@dataclasses.dataclass(frozen=True)
class AppUserPlan:
    """How the agent learns the application's user (see `contract.RunCommand`)."""

    user: str | None = None
    probe: bool = False
    groups: tuple[int, ...] = ()
    strict_groups: bool = False
    non_root: bool = False

    def describe(self) -> str:
        if self.user is not None:
            return f"uid:gid {self.user}" if ":" in self.user else f"uid {self.user}"
        if self.probe:
            return "the image's USER"
        return "root"


@dataclasses.dataclass(frozen=True)
class Secured:
    """What `secure()` did to one container."""

    user: AppUserPlan
    added_capabilities: tuple[str, ...]
    drop_for_app: tuple[str, ...]
    previous_seccomp: str | None

    def warning(self, container: str) -> str:
        parts = []
        if self.added_capabilities:
            reasons = "; ".join(
                f"{contract.kubernetes_capability(c)}: {contract.CAPABILITY_REASONS.get(c, '')}"
                for c in self.added_capabilities
            )
            parts.append(f"capabilities added for the agent ({reasons})")
        parts.append(
            f"seccompProfile Unconfined instead of {self.previous_seccomp or 'the node default'}"
            " (CRIU cannot dump a process under a seccomp filter)"
        )
        parts.append("the agent runs as root")
        kept = f"; the application runs as {self.user.describe()}"
        if self.drop_for_app:
            kept += ", without " + ", ".join(
                contract.kubernetes_capability(c) for c in self.drop_for_app
            )
        return f"podckpt: container {container}: " + "; ".join(parts) + kept


def _effective(container_ctx: Mapping[str, Any], pod_ctx: Mapping[str, Any], field: str) -> Any:
    value = container_ctx.get(field)
    return pod_ctx.get(field) if value is None else value


def _field(container: str, field: str) -> str:
    return f"spec.containers[{container}].securityContext.{field}"


def user_plan(
    container: Mapping[str, Any], pod_spec: Mapping[str, Any], image: ImageArgv | None
) -> AppUserPlan:
    """How the application's user is found; SecurityDenied where runAsNonRoot cannot hold."""
    name = str(container.get("name"))
    own: Mapping[str, Any] = container.get("securityContext") or {}
    pod: Mapping[str, Any] = pod_spec.get("securityContext") or {}
    uid = _effective(own, pod, "runAsUser")
    gid = _effective(own, pod, "runAsGroup")
    non_root = bool(_effective(own, pod, "runAsNonRoot"))
    if non_root and uid == 0:
        raise SecurityDenied(
            f"{_field(name, 'runAsNonRoot')} is true but runAsUser is 0 ({_KUBELET_REFUSES}):"
            " set runAsUser to a non-zero uid"
        )
    if non_root and uid is None and image is not None:
        user = image.user.partition(":")[0]
        if not user or user in {"0", "root"}:
            raise SecurityDenied(
                f"{_field(name, 'runAsNonRoot')} is true but image {container.get('image')}"
                f" runs as root (USER {image.user or 'unset'}; {_KUBELET_REFUSES}): set"
                f" {_field(name, 'runAsUser')} to a non-zero uid"
            )
        if not user.isdigit():
            raise SecurityDenied(
                f"{_field(name, 'runAsNonRoot')} is true but image {container.get('image')}"
                f" names its USER {image.user!r}, which cannot be verified to be non-root"
                f" ({_KUBELET_REFUSES}): set {_field(name, 'runAsUser')} to its uid"
            )
    groups = [int(g) for g in pod.get("supplementalGroups") or ()]
    if pod.get("fsGroup") is not None:
        groups.append(int(pod["fsGroup"]))
    strict = pod.get("supplementalGroupsPolicy") == "Strict"
    if uid is None:
        # The image's USER decides (with runAsGroup, if set): the probe sees what it becomes.
        return AppUserPlan(probe=True, non_root=non_root)
    user = str(int(uid)) if gid is None else f"{int(uid)}:{int(gid)}"
    if int(uid) == 0 and (gid is None or int(gid) == 0):
        return AppUserPlan(non_root=non_root)  # root, as the container asked
    return AppUserPlan(
        user=user,
        groups=tuple(dict.fromkeys(groups)),
        strict_groups=strict,
        non_root=non_root,
    )


def needed_capabilities(
    user: AppUserPlan, extra: Iterable[str] = (), base: Sequence[str] | None = None
) -> tuple[str, ...]:
    """Capabilities (`CAP_X`) the agent needs in this container: `base` (the operator's
    setting, default `contract.REQUIRED_CAPABILITIES`), the user-dump set unless the
    application is known to run as root, and `extra` (what requested CRIU options need)."""
    needed = list(base if base is not None else contract.REQUIRED_CAPABILITIES)
    if user.user is not None or user.probe:
        needed += contract.USER_DUMP_CAPABILITIES
    needed += extra
    return tuple(dict.fromkeys("CAP_" + c.removeprefix("CAP_") for c in needed))


def _without_cap_prefix(names: Iterable[str]) -> set[str]:
    return {"CAP_" + str(n).upper().removeprefix("CAP_") for n in names}


def secure(
    container: dict[str, Any],
    pod_spec: Mapping[str, Any],
    user: AppUserPlan,
    needed: Sequence[str],
) -> Secured:
    """Rewrite `container`'s securityContext for the agent (in place)."""
    security = container.setdefault("securityContext", {})
    capabilities = security.setdefault("capabilities", {})
    user_add = _without_cap_prefix(capabilities.get("add") or ())
    user_drop = _without_cap_prefix(capabilities.get("drop") or ())
    add = list(capabilities.get("add") or ())
    added = [c for c in needed if c not in user_add]
    add += [contract.kubernetes_capability(c) for c in added]
    capabilities["add"] = add
    if capabilities.get("drop"):
        capabilities["drop"] = [
            c for c in capabilities["drop"] if _without_cap_prefix([c]).isdisjoint(needed)
        ]
        if not capabilities["drop"]:
            del capabilities["drop"]
    # What the container would have held without podckpt: the runtime's defaults minus what
    # it dropped, plus what it added itself. The application keeps exactly that.
    had = set() if "CAP_ALL" in user_drop else set(contract.RUNTIME_DEFAULT_CAPABILITIES)
    had = (had - user_drop) | user_add
    drop_for_app = tuple(c for c in needed if c not in had)

    previous = (security.get("seccompProfile") or {}).get("type") or (
        (pod_spec.get("securityContext") or {}).get("seccompProfile") or {}
    ).get("type")
    security["seccompProfile"] = {"type": "Unconfined"}
    security["runAsUser"] = 0
    security["runAsGroup"] = 0
    security["runAsNonRoot"] = False
    sys_admin = "CAP_SYS_ADMIN" in needed or "CAP_SYS_ADMIN" in user_add
    if not security.get("privileged") and not sys_admin:
        # no_new_privs for the agent and everything it starts: a setuid binary cannot give
        # the application what the agent holds. Kubernetes refuses it together with
        # privileged or an added SYS_ADMIN; an explicit `true` of the user is kept.
        security.setdefault("allowPrivilegeEscalation", False)
    return Secured(user, tuple(added), drop_for_app, previous)


def probe_container(
    container: Mapping[str, Any], index: int, *, bundle_volume: str, user_volume: str
) -> dict[str, Any]:
    """The user probe of `container`: its image and securityContext (the runtime applies the
    same user rules), no capabilities, no environment; writes its credentials for the agent."""
    name = str(container["name"])
    security = copy.deepcopy(dict(container.get("securityContext") or {}))
    security.pop("capabilities", None)
    if not security.get("privileged"):
        security["capabilities"] = {"drop": ["ALL"]}
        security["allowPrivilegeEscalation"] = False
    security["readOnlyRootFilesystem"] = True
    probe: dict[str, Any] = {
        "name": f"podckpt-user-{index}",
        "image": container.get("image", ""),
        "command": contract.whoami_command(name),
        "volumeMounts": [
            {"name": bundle_volume, "mountPath": contract.BUNDLE_MOUNT, "readOnly": True},
            {"name": user_volume, "mountPath": contract.USER_MOUNT},
        ],
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"memory": "64Mi"},
        },
        "securityContext": security,
    }
    if container.get("imagePullPolicy"):
        probe["imagePullPolicy"] = container["imagePullPolicy"]
    return probe


def pod_security_refusal(
    namespace: str, labels: Mapping[str, str], containers: Sequence[str]
) -> str | None:
    """The denial for a namespace whose Pod Security level refuses injected pods, or None.

    Pod Security admission runs after mutating webhooks; without this the user would get its
    list of violations of fields podckpt set, not the reason and the fix."""
    level = labels.get(POD_SECURITY_ENFORCE)
    if level is None or level == PRIVILEGED_LEVEL:
        return None
    return (
        f"podckpt: namespace {namespace} enforces the Pod Security level {level!r}"
        f" ({POD_SECURITY_ENFORCE}={level}), which refuses what checkpointing needs in"
        f" container(s) {', '.join(containers)}: added capabilities (CHECKPOINT_RESTORE, ...)"
        " and seccompProfile Unconfined for the podckpt agent. podckpt needs the 'privileged'"
        f" level: kubectl label namespace {namespace} --overwrite"
        f" {POD_SECURITY_ENFORCE}={PRIVILEGED_LEVEL} (see docs/security.md), or do not opt"
        " this pod in"
    )


def check_reserved_names(
    spec: Mapping[str, Any], volumes: Sequence[str], container_prefix: str
) -> None:
    """podckpt's volumes stay podckpt's: no volume of the pod may take a reserved name, and no
    container may mount one (a sidecar mounting the checkpoint volume would read the
    checkpointed processes' memory; one mounting the run volume would reach the agents)."""
    names = [v.get("name") for v in spec.get("volumes") or ()]
    for ours in volumes:
        if ours in names:
            raise SecurityDenied(f"volume name {ours!r} is reserved for podckpt; rename the volume")
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(field) or ():
            name = str(container.get("name", ""))
            if field == "initContainers" and name.startswith(container_prefix):
                raise SecurityDenied(
                    f"init container name {name!r}: names starting with {container_prefix!r}"
                    " are reserved for podckpt; rename it"
                )
            for mount in container.get("volumeMounts") or ():
                if mount.get("name") in volumes:
                    raise SecurityDenied(
                        f"container {name!r} mounts {mount.get('name')!r}, a volume reserved"
                        " for podckpt's agent; remove that volumeMount"
                    )
