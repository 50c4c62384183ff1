"""Which checkpoint a pod restores: its workload identity (ARCHITECTURE section 4).

An identity names one checkpoint store: one dynamic PVC (`claim_name`) and one directory on
the volume (`key`). It is decided at admission from what the pod already carries (its
controller ownerReference, the StatefulSet pod index, the Job completion index) and, for
ReplicaSet/Deployment pods, from a slot chosen by the webhook (`slots.choose_slot`, see
docs/architecture.md, "Identity").
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import re
from collections.abc import Mapping
from typing import Any

#: Well-known labels and annotations Kubernetes puts on controller-made pods.
STATEFULSET_POD_INDEX = "apps.kubernetes.io/pod-index"
JOB_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
POD_TEMPLATE_HASH = "pod-template-hash"

#: PVC and pod names are DNS subdomains; we keep them well under the limit.
_MAX_NAME = 200
_DNS_SAFE = re.compile(r"[^a-z0-9.-]+")

Body = Mapping[str, Any]


class WorkloadKind(enum.StrEnum):
    STATEFULSET = "statefulset"
    JOB = "job"
    DEPLOYMENT = "deployment"
    REPLICASET = "replicaset"
    POD = "pod"


@dataclasses.dataclass(frozen=True)
class Owner:
    """The controller ownerReference of a pod."""

    api_version: str
    kind: str
    name: str
    uid: str


@dataclasses.dataclass(frozen=True)
class Identity:
    """One checkpoint store. `index` is the StatefulSet ordinal, the Job completion index or
    the Deployment/ReplicaSet slot; `run` distinguishes runs of Jobs with the same name."""

    kind: WorkloadKind
    workload: str
    index: str | None = None
    run: str | None = None

    @property
    def key(self) -> str:
        """Directory of this identity on the checkpoint volume (and the PVC's suffix)."""
        parts = [self.kind.value, self.workload]
        if self.run:
            parts.append(self.run)
        if self.index is not None:
            parts.append(self.index)
        return bounded_name("-".join(parts))

    @property
    def claim_name(self) -> str:
        """Name of the dynamic PVC of this identity."""
        return bounded_name("podckpt-" + self.key)

    @property
    def needs_slot(self) -> bool:
        return self.kind in (WorkloadKind.DEPLOYMENT, WorkloadKind.REPLICASET) and (
            self.index is None
        )

    def with_slot(self, slot: int) -> Identity:
        return dataclasses.replace(self, index=str(slot))

    @property
    def slot_group(self) -> str:
        """Label value shared by the pods that compete for this workload's slots."""
        return label_value(f"{self.kind.value}-{self.workload}")

    def encode(self) -> str:
        """`kind/workload[/run][#index]`, stored in the pod annotation `<domain>/identity`."""
        text = f"{self.kind.value}/{self.workload}"
        if self.run:
            text += f"/{self.run}"
        if self.index is not None:
            text += f"#{self.index}"
        return text

    @classmethod
    def decode(cls, text: str) -> Identity:
        head, _, index = text.partition("#")
        kind, _, rest = head.partition("/")
        workload, _, run = rest.partition("/")
        if not workload:
            raise ValueError(f"not an identity: {text!r}")
        return cls(WorkloadKind(kind), workload, index or None, run or None)


def bounded_name(text: str) -> str:
    """A DNS-subdomain-safe name; long names keep a readable head and a hash of the whole."""
    text = _DNS_SAFE.sub("-", text.lower()).strip("-.")
    if len(text) <= _MAX_NAME:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return text[: _MAX_NAME - 11].rstrip("-.") + "-" + digest


def label_value(text: str) -> str:
    """A label value (<= 63 characters) that identifies `text`."""
    text = _DNS_SAFE.sub("-", text.lower()).strip("-.")
    if len(text) <= 63:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return text[:52].rstrip("-.") + "-" + digest


def controller_owner(pod: Body) -> Owner | None:
    for ref in pod.get("metadata", {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return Owner(ref.get("apiVersion", ""), ref["kind"], ref["name"], ref.get("uid", ""))
    return None


def _statefulset_ordinal(pod: Body, set_name: str) -> str | None:
    meta = pod.get("metadata", {})
    index = (meta.get("labels") or {}).get(STATEFULSET_POD_INDEX)
    if index is not None and str(index).isdigit():
        return str(index)
    name = meta.get("name") or ""
    prefix = set_name + "-"
    if name.startswith(prefix) and name[len(prefix) :].isdigit():
        return name[len(prefix) :]
    return None


def resolve_identity(pod: Body) -> Identity:
    """The identity a new pod belongs to, from what it carries at admission.

    Deployment and ReplicaSet identities come back without an index: the caller must choose a
    slot (`slots.choose_slot`). A pod of any other controller kind (DaemonSet, custom
    controllers) is treated as a plain pod: it needs its own `checkpoint-storage-volume`.
    """
    meta = pod.get("metadata", {})
    owner = controller_owner(pod)
    uid_run = (owner.uid.replace("-", "")[:8] or None) if owner else None
    if owner is not None and owner.api_version.startswith("apps/"):
        if owner.kind == "StatefulSet":
            ordinal = _statefulset_ordinal(pod, owner.name)
            if ordinal is not None:
                return Identity(WorkloadKind.STATEFULSET, owner.name, ordinal)
        elif owner.kind == "ReplicaSet":
            template_hash = (meta.get("labels") or {}).get(POD_TEMPLATE_HASH)
            suffix = f"-{template_hash}"
            if template_hash and owner.name.endswith(suffix) and len(owner.name) > len(suffix):
                return Identity(WorkloadKind.DEPLOYMENT, owner.name[: -len(suffix)])
            return Identity(WorkloadKind.REPLICASET, owner.name)
    if owner is not None and owner.api_version.startswith("batch/") and owner.kind == "Job":
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        index = labels.get(JOB_COMPLETION_INDEX, annotations.get(JOB_COMPLETION_INDEX))
        return Identity(WorkloadKind.JOB, owner.name, str(index) if index else None, uid_run)
    return Identity(WorkloadKind.POD, meta.get("name") or "")


def owner_of(pod: Body) -> Owner | None:
    """The controller owner if it is one of the kinds with a workload identity."""
    owner = controller_owner(pod)
    if owner is None:
        return None
    if (owner.api_version.startswith("apps/") and owner.kind in ("StatefulSet", "ReplicaSet")) or (
        owner.api_version.startswith("batch/") and owner.kind == "Job"
    ):
        return owner
    return None


def top_level_owner(pod_owner: Owner, replicaset: Mapping[str, Any] | None) -> Owner:
    """The workload a pod's checkpoints belong to: a ReplicaSet's Deployment, else the
    pod's own controller."""
    if pod_owner.kind != "ReplicaSet" or replicaset is None:
        return pod_owner
    for ref in replicaset.get("metadata", {}).get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == "Deployment":
            return Owner(ref["apiVersion"], ref["kind"], ref["name"], ref["uid"])
    return pod_owner
