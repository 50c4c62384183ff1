"""Whether an identity's checkpoint PVC can be used by a new pod (pure).

A checkpoint volume follows its workload: it is owned by the top-level workload (Deployment,
StatefulSet, Job) and garbage-collected with it. A workload deleted and recreated under the
same name (a Helm reinstall, a GitOps prune) asks for a PVC of the same name while the old
one still exists: owned by the deleted workload (garbage collection has not reached it yet)
or Terminating (it has, and `kubernetes.io/pvc-protection` holds it until its last pod is
gone). Neither may be used: the new workload would restore the old one's state, or stay
Pending on a volume that is going away. A PVC without any owner is one that a workload
deleted with `--cascade=orphan` left behind on purpose: the recreated workload takes it again,
as a StatefulSet takes its `volumeClaimTemplates`.

The webhook uses this to decide whether a new pod must wait (a scheduling gate), the
controller to decide when it may stop waiting.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any


class ClaimState(enum.Enum):
    #: No such PVC: the controller creates it.
    MISSING = "missing"
    #: It exists, is not being deleted, and belongs to this workload (or to none).
    READY = "ready"
    #: Being deleted: wait until it is gone, then a new one is created.
    TERMINATING = "terminating"
    #: Owned by another workload of the same name (deleted since): garbage collection
    #: deletes it; wait until it is gone.
    STALE = "stale"


def claim_state(claim: Mapping[str, Any] | None, workload_uid: str | None) -> ClaimState:
    """The state of `claim` (a PVC object, None when it does not exist) for a pod of the
    workload whose uid is `workload_uid` (None: the pod has none, nothing to compare)."""
    if claim is None:
        return ClaimState.MISSING
    meta = claim.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return ClaimState.TERMINATING
    owners = {ref.get("uid") for ref in meta.get("ownerReferences") or () if ref}
    if owners and workload_uid is not None and workload_uid not in owners:
        return ClaimState.STALE
    return ClaimState.READY


def bound_or_late_binding(claim: Mapping[str, Any], binding_mode: str | None) -> bool:
    """Whether the scheduler can place a pod on `claim` now without reporting a failure: it is
    Bound, or its class binds only once a pod is scheduled (`WaitForFirstConsumer`). An
    unbound claim of an `Immediate` class makes the scheduler report `FailedScheduling ...
    unbound immediate PersistentVolumeClaims` until the provisioner has bound it."""
    if (claim.get("status") or {}).get("phase") == "Bound":
        return True
    return binding_mode != "Immediate"


def describe(state: ClaimState, claim: str) -> str:
    """Why a pod waits for `claim`, for its Event."""
    match state:
        case ClaimState.TERMINATING:
            return (
                f"checkpoint volume {claim} is being deleted (its workload was deleted); this"
                " pod is scheduled with a new, empty one once it is gone"
            )
        case ClaimState.STALE:
            return (
                f"checkpoint volume {claim} belongs to a deleted workload of the same name;"
                " this pod is scheduled with a new, empty one once garbage collection has"
                " removed it"
            )
        case ClaimState.MISSING:
            return f"checkpoint volume {claim} is being created"
    return f"checkpoint volume {claim} is ready"
