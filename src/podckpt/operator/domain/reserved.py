"""Which checkpoint volume a pod may have, decided from the pod itself (pure).

The webhook writes `podckpt.io/identity` and `podckpt.io/claim` on the pods it injects, but
anyone who can create a pod can write those annotations too (a pod that claims to be
"already injected" is not injected again). The controller, which can create PVCs in every
namespace, therefore never takes a PVC name from an annotation: it recomputes the pod's
workload identity from what Kubernetes set on the pod (its controller ownerReference, the
StatefulSet index, the Job completion index, the Deployment slot label) and creates the
identity's claim only if the annotation names exactly that claim and the pod mounts it as
podckpt's store volume. A forged annotation can at most ask for the claim that podckpt would
have created for that pod anyway. The ValidatingAdmissionPolicy in config/policy refuses
`podckpt.io/*` keys on pods the webhook never sees and any later change of them; on an
opted-in pod, only this recomputation stands between a forged key and a volume
(docs/security.md, "Reserved keys").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .identity import Identity, WorkloadKind, resolve_identity

#: The pod volume that holds a dynamic checkpoint claim (the webhook names it so).
STORE_VOLUME = "podckpt-store"


@dataclasses.dataclass(frozen=True)
class TrustedClaim:
    identity: Identity
    claim: str


class UntrustedClaim(Exception):
    """The pod's annotations do not match what podckpt would have set; the message says how."""


def trusted_claim(pod: Mapping[str, Any], claim_key: str, slot_key: str) -> TrustedClaim:
    """The identity and claim of an injected pod, recomputed; UntrustedClaim otherwise.

    `claim_key` and `slot_key` are the operator's annotation and label names
    (`podckpt.io/claim`, `podckpt.io/slot`)."""
    meta = pod.get("metadata") or {}
    claim = (meta.get("annotations") or {}).get(claim_key)
    if not claim:
        raise UntrustedClaim(f"no {claim_key} annotation")
    identity = resolve_identity(pod)
    if identity.kind is WorkloadKind.POD:
        raise UntrustedClaim(
            f"{claim_key} {claim!r} on a pod that no StatefulSet, Deployment, ReplicaSet or Job"
            " controls: such pods keep checkpoints on their own volume, podckpt creates none"
        )
    if identity.needs_slot:
        slot = str((meta.get("labels") or {}).get(slot_key, ""))
        if not slot.isdigit():
            raise UntrustedClaim(f"a {identity.kind.value} pod without a {slot_key} label")
        identity = identity.with_slot(int(slot))
    if claim != identity.claim_name:
        raise UntrustedClaim(
            f"{claim_key} {claim!r} is not this pod's checkpoint volume: its workload identity"
            f" {identity.encode()} has {identity.claim_name!r}"
        )
    for volume in (pod.get("spec") or {}).get("volumes") or ():
        if volume.get("name") == STORE_VOLUME and (
            (volume.get("persistentVolumeClaim") or {}).get("claimName") == claim
        ):
            return TrustedClaim(identity, claim)
    raise UntrustedClaim(f"{claim_key} {claim!r}: the pod does not mount it as {STORE_VOLUME}")
