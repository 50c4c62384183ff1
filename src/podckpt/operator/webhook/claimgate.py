"""Whether a new pod must wait for its checkpoint volume (reads only).

The controller creates an identity's PVC when it sees the identity's first pod; admitted
before that, the pod would meet a scheduler that cannot find its PVC (2-3 `FailedScheduling`
warnings per first pod on the local cluster) or, for a workload deleted and recreated under
the same name, a PVC that is going away (`podckpt.operator.domain.claims`). Such a pod is
created with a scheduling gate, which the controller removes once the PVC is usable. A pod
whose PVC is already there and its own (every replacement pod: the restore path) is not
gated, so that a restore never waits for the controller.

The same GET gives the dump throughput the controller recorded on the PVC (from the agent's
last commit), from which the pod's grace period is computed (`inject.build`).

Two reads at most: the PVC (a GET by name), and, for a Deployment's pod, its ReplicaSet (the
PVC belongs to the Deployment; cached by ReplicaSet uid, which never changes owner but by an
orphaning delete). A read that fails gates the pod: the controller sorts it out.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from podckpt.operator.domain.claims import ClaimState, claim_state
from podckpt.operator.domain.identity import controller_owner, top_level_owner
from podckpt.operator.kube.api import ApiError, KubeAPI, namespaced

logger = logging.getLogger(__name__)


class OwnerCache:
    """ReplicaSet uid -> the uid of its top-level workload (bounded)."""

    def __init__(self, size: int = 4096) -> None:
        self._items: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._size = size

    def get(self, uid: str) -> str | None:
        return self._items.get(uid)

    def put(self, uid: str, top: str) -> None:
        self._items[uid] = top
        if len(self._items) > self._size:
            self._items.popitem(last=False)


async def workload_uid(
    api: KubeAPI, cache: OwnerCache, namespace: str, pod: Mapping[str, Any]
) -> str | None:
    """The uid of the workload that owns the pod's checkpoint volume."""
    owner = controller_owner(pod)
    if owner is None:
        return None
    if owner.kind != "ReplicaSet":
        return owner.uid
    cached = cache.get(owner.uid)
    if cached is not None:
        return cached
    replicaset = await api.get(namespaced("/apis/apps/v1/replicasets", namespace, owner.name))
    top = top_level_owner(owner, replicaset).uid
    cache.put(owner.uid, top)
    return top


@dataclasses.dataclass(frozen=True)
class ClaimCheck:
    """What admission learns from the pod's checkpoint volume."""

    #: The pod must wait behind the scheduling gate (the PVC is missing, going, or another's).
    gate: bool
    #: The dump throughput the controller recorded on the PVC from the agent's last commit
    #: (`measured_annotation`), for the grace period; None before the first dump.
    measured_bytes_per_second: int | None = None


async def check_claim(
    api: KubeAPI | None,
    cache: OwnerCache,
    namespace: str,
    pod: Mapping[str, Any],
    claim: str,
    *,
    measured_annotation: str,
) -> ClaimCheck:
    """Gate unless `claim` exists, is not being deleted and belongs to the pod's workload;
    and the measured throughput of a usable claim."""
    if api is None:
        return ClaimCheck(gate=True)
    try:
        try:
            found: dict[str, Any] = await api.get(
                namespaced("persistentvolumeclaims", namespace, claim)
            )
        except ApiError as exc:
            if not exc.not_found:
                raise
            return ClaimCheck(gate=True)
        state = claim_state(found, await workload_uid(api, cache, namespace, pod))
    except ApiError as exc:
        logger.info(
            "checkpoint volume %s/%s unknown (%s): the pod waits for it", namespace, claim, exc
        )
        return ClaimCheck(gate=True)
    if state is not ClaimState.READY:
        return ClaimCheck(gate=True)
    annotations = (found.get("metadata") or {}).get("annotations") or {}
    return ClaimCheck(False, measured(annotations, measured_annotation))


def measured(annotations: Mapping[str, str], name: str) -> int | None:
    """A positive integer annotation (bytes per second), else None: written by our
    controller, but on an object others may edit."""
    text = str(annotations.get(name, ""))
    if not text.isdigit() or len(text) > 15 or int(text) <= 0:
        return None
    return int(text)


async def needs_gate(
    api: KubeAPI | None, cache: OwnerCache, namespace: str, pod: Mapping[str, Any], claim: str
) -> bool:
    """True unless `claim` exists, is not being deleted and belongs to the pod's workload."""
    check = await check_claim(api, cache, namespace, pod, claim, measured_annotation="")
    return check.gate
