"""What the plugin knows about a pod or a workload, read with kubectl (no exec): the pod's
podckpt annotations, its checkpoint PVC and the summary the controller keeps on it
(`podckpt.api.summary`), and the reasons a pod would not be checkpointed right now."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from podckpt.api import InvalidValueError, Key, parse_settings, qualified, summary

from .kubectl import Kubectl, KubectlError, NotFoundError

#: `kubectl podckpt status KIND/NAME` kinds, with kubectl's short names.
WORKLOAD_KINDS = {
    "deployment": "deployment",
    "deployments": "deployment",
    "deploy": "deployment",
    "statefulset": "statefulset",
    "statefulsets": "statefulset",
    "sts": "statefulset",
    "job": "job",
    "jobs": "job",
    "replicaset": "replicaset",
    "replicasets": "replicaset",
    "rs": "replicaset",
}
POD_KINDS = {"pod", "pods", "po"}


class TargetError(Exception):
    """The named pod or workload does not exist or cannot be read."""


@dataclasses.dataclass(frozen=True)
class Domain:
    """podckpt's own annotation names (`PODCKPT_DOMAIN` of the operator)."""

    name: str = summary.DEFAULT_DOMAIN

    def key(self, suffix: str) -> str:
        return f"{self.name}/{suffix}"


def _meta(obj: Mapping[str, Any], field: str) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get(field) or {})


def namespace_meta(kubectl: Kubectl, namespace: str) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) of the namespace; empty if the user may not read it."""
    try:
        ns = kubectl.get("namespace", namespace, namespaced=False)
    except KubectlError:
        return {}, {}
    return _meta(ns, "labels"), _meta(ns, "annotations")


def effective_mode(
    labels: Mapping[str, str], annotations: Mapping[str, str], ns: tuple[dict[str, str], ...]
) -> tuple[bool | None, str | None]:
    """(checkpoint-mode, error): None with the parser's message when a key is invalid."""
    try:
        settings = parse_settings(
            dict(labels), dict(annotations), namespace_labels=ns[0], namespace_annotations=ns[1]
        )
    except InvalidValueError as exc:
        return None, str(exc)
    return settings.mode, None


def selector_text(selector: Mapping[str, Any]) -> str:
    """A LabelSelector as kubectl's `-l` text."""
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def not_checkpointable(
    pod: Mapping[str, Any],
    claim: Mapping[str, Any] | None,
    record: Mapping[str, Any],
    ns: tuple[dict[str, str], dict[str, str]],
    domain: Domain,
) -> list[str]:
    """Why `pod` would not be checkpointed if it were deleted now (empty: it would be)."""
    labels, annotations = _meta(pod, "labels"), _meta(pod, "annotations")
    mode, error = effective_mode(labels, annotations, ns)
    reasons = []
    if error is not None:
        reasons.append(f"invalid key: {error}")
    if domain.key("injected") not in annotations:
        if mode:
            reasons.append(
                "created without the podckpt agent (labelled after its creation, the webhook"
                " was unavailable for an injection namespace, or its namespace is excluded):"
                " recreate the pod"
            )
        else:
            reasons.append(
                f"not opted in: no {qualified(Key.CHECKPOINT_MODE)}=true on the pod (template)"
                " or its namespace"
            )
        return reasons
    if mode is False:
        reasons.append(
            f"{qualified(Key.CHECKPOINT_MODE)} is not true: the agent is dormant and will not"
            " checkpoint"
        )
    claim_name = annotations.get(domain.key("claim"))
    if claim_name and claim is None:
        reasons.append(f"its checkpoint volume {claim_name} does not exist (yet)")
    elif claim is not None and (claim.get("status") or {}).get("phase") != "Bound":
        phase = (claim.get("status") or {}).get("phase", "Pending")
        reasons.append(f"its checkpoint volume {claim_name} is {phase}")
    phase = (pod.get("status") or {}).get("phase")
    if phase != "Running":
        reasons.append(f"the pod is {phase or 'not running'}: nothing to checkpoint")
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        reasons.append("the pod is terminating (its checkpoint is being written or done)")
    for container, entry in sorted((record.get("containers") or {}).items()):
        last = entry.get("last_checkpoint") or {}
        if last.get("outcome") == "failed":
            reasons.append(
                f"container {container}: the last checkpoint failed: {last.get('error')}"
            )
    return reasons


def claim_of(kubectl: Kubectl, name: str | None) -> dict[str, Any] | None:
    if not name:
        return None
    try:
        return kubectl.get("persistentvolumeclaim", name)
    except NotFoundError:
        return None


def pod_view(
    kubectl: Kubectl,
    pod: Mapping[str, Any],
    ns: tuple[dict[str, str], dict[str, str]],
    domain: Domain,
    claims: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Everything `status` says about one pod (JSON-ready)."""
    meta = pod.get("metadata") or {}
    labels, annotations = _meta(pod, "labels"), _meta(pod, "annotations")
    claim_name = annotations.get(domain.key("claim"))
    claim = (claims or {}).get(claim_name or "") if claims is not None else None
    if claim is None and claims is None:
        claim = claim_of(kubectl, claim_name)
    record = (
        summary.parse(_meta(claim, "annotations").get(summary.annotation(domain.name)))
        if claim
        else summary.empty()
    )
    mode, _ = effective_mode(labels, annotations, ns)
    checkpointed = [c for c in annotations.get(domain.key("containers"), "").split(",") if c]
    return {
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "phase": (pod.get("status") or {}).get("phase"),
        "node": (pod.get("spec") or {}).get("nodeName"),
        "opted_in": bool(mode),
        "injected": domain.key("injected") in annotations,
        "mode": annotations.get(domain.key("mode")),
        "identity": annotations.get(domain.key("identity")),
        "claim": claim_view(claim, claim_name),
        "containers": checkpointed,
        "checkpoints": record.get("containers") or {},
        "not_checkpointable": not_checkpointable(pod, claim, record, ns, domain),
    }


def claim_view(claim: Mapping[str, Any] | None, name: str | None) -> dict[str, Any] | None:
    if claim is None:
        return {"name": name, "phase": "Missing"} if name else None
    status = claim.get("status") or {}
    spec = claim.get("spec") or {}
    return {
        "name": (claim.get("metadata") or {}).get("name"),
        "phase": status.get("phase"),
        "capacity": (status.get("capacity") or {}).get("storage")
        or ((spec.get("resources") or {}).get("requests") or {}).get("storage"),
        "storage_class": spec.get("storageClassName"),
        "volume": spec.get("volumeName"),
    }


def resolve(kubectl: Kubectl, target: str | None) -> tuple[str, str | None, dict[str, Any] | None]:
    """(kind, name, object) of `KIND/NAME`, a bare NAME (a pod, else a workload) or nothing."""
    if not target:
        return "namespace", None, None
    kind, sep, name = target.partition("/")
    if not sep:
        kind, name = "", target
    kind = kind.lower()
    candidates = (
        ["pod"]
        if kind in POD_KINDS
        else [WORKLOAD_KINDS[kind]]
        if kind in WORKLOAD_KINDS
        else ["pod", "deployment", "statefulset", "job", "replicaset"]
        if not kind
        else []
    )
    if not candidates:
        kinds = ", ".join(sorted({"pod", *WORKLOAD_KINDS.values()}))
        raise TargetError(f"{kind}: not a kind podckpt checkpoints ({kinds})")
    for candidate in candidates:
        try:
            return candidate, name, kubectl.get(candidate, name)
        except NotFoundError:
            continue
        except KubectlError as exc:
            raise TargetError(f"{candidate}/{name}: {exc}") from None
    raise TargetError(
        f"{target}: no such {' or '.join(candidates)} in namespace {kubectl.current_namespace()}"
    )
