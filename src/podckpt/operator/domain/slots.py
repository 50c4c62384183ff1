"""Deployment and ReplicaSet slots: which checkpoint a new replica restores, and its pod name.

A Deployment's replicas are interchangeable, but a checkpoint belongs to one process tree, so
each replica holds a **slot** `0..n` with a store of its own. The pod's name is the slot's lock
(`<workload>-slot-<n>`): the API server refuses a second live pod of that name, so a
replacement cannot start before its predecessor's dump ends, and two admissions that choose the
same slot cannot both succeed. What a pod name cannot express is a pod that holds its name
without holding its slot any more; this module classifies every holder first:

- `LIVE`: not deleted and not finished. Its slot is taken.
- `TERMINATING`: deleted and within its grace period (plus a margin): its agent is writing the
  checkpoint now, or has and the kubelet is releasing its volume. The replacement asks for
  **the same name**, so its create fails with AlreadyExists until the old pod is gone, and
  then it restores exactly that checkpoint.
- `GONE`: finished without being deleted (Failed or Succeeded: evicted by the kubelet, shut
  down with its node) or terminating past its deadline (its node or kubelet is lost and
  nothing will ever confirm its deletion). Its process tree is dead or unreachable and its
  checkpoint is final, but the object keeps its name: the replacement takes the slot under
  the next free name of the slot (`<workload>-slot-<n>-<k>`), deterministically, so that
  concurrent admissions still collide on one name. The finished pod stays for `kubectl
  describe` (Kubernetes' pod garbage collector removes it later, as for any evicted pod).

Pure functions (no I/O): the webhook feeds them a quorum LIST of the slot group's pods.
See docs/architecture.md, "Deployment slots".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Iterable, Mapping
from typing import Any

from .identity import Identity, bounded_name

#: How long after its deletion deadline (deletionTimestamp = deletion + grace period) a pod
#: that still exists is taken as lost. A live kubelet confirms a deletion within seconds of the
#: deadline (it kills the containers at the deadline); 30 s also covers clock skew between the
#: webhook and the API server and a slow volume unmount.
LOST_AFTER_DEADLINE = dt.timedelta(seconds=30)

#: Names tried per slot before giving up (each finished pod of a slot keeps one).
_MAX_NAMES = 1000


class HolderState(enum.Enum):
    LIVE = "live"
    TERMINATING = "terminating"
    GONE = "gone"


@dataclasses.dataclass(frozen=True)
class Holder:
    """A pod of the slot group, as far as slots are concerned."""

    slot: int
    name: str
    state: HolderState


@dataclasses.dataclass(frozen=True)
class SlotChoice:
    """The slot a new replica takes and the pod name it is created under.

    `waits`: the name belongs to a terminating pod, so the create fails with AlreadyExists
    until that pod is gone (its checkpoint committed); nothing must be reserved for it."""

    slot: int
    name: str
    waits: bool = False


def _timestamp(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def holder_state(
    pod: Mapping[str, Any], now: dt.datetime, lost_after: dt.timedelta = LOST_AFTER_DEADLINE
) -> HolderState:
    """Classify a pod of a slot group (see the module docstring).

    A deleted pod is terminating until its deadline whatever its phase: the kubelet gives a
    deleted pod a terminal phase once its containers have exited and only then unmounts its
    volumes and removes it, and its replacement must wait for that (its volume released)."""
    meta = pod.get("metadata") or {}
    deleted = meta.get("deletionTimestamp")
    if deleted:
        deadline = _timestamp(str(deleted))
        if deadline is not None and now > deadline + lost_after:
            return HolderState.GONE
        return HolderState.TERMINATING
    phase = (pod.get("status") or {}).get("phase")
    if phase in ("Failed", "Succeeded"):
        return HolderState.GONE
    return HolderState.LIVE


def slot_pod_name(identity: Identity, slot: int, attempt: int = 0) -> str:
    """The pod name of `slot`'s `attempt`-th holder: `<workload>-slot-<n>` first, then
    `<workload>-slot-<n>-<k>` while finished or lost pods keep the earlier names."""
    suffix = f"-slot-{slot}" + (f"-{attempt}" if attempt else "")
    return bounded_name(f"{identity.workload}{suffix}")


def choose_slot(
    identity: Identity,
    holders: Iterable[Holder],
    reserved: Iterable[int] = (),
    *,
    taken_names: Iterable[str] = (),
    limit: int = 10_000,
) -> SlotChoice:
    """The slot and pod name of a new replica.

    The lowest slot that no live pod holds and no concurrent admission of this webhook replica
    has reserved. Reservations never hide a slot whose holder is terminating (the
    replacement's retries must keep asking for it; the pod name serializes them) or gone.
    `taken_names` are names known to exist besides `holders` (pods without our slot labels).
    """
    by_slot: dict[int, list[Holder]] = {}
    for holder in holders:
        by_slot.setdefault(holder.slot, []).append(holder)
    taken = {s for s, hs in by_slot.items() if any(h.state is HolderState.LIVE for h in hs)}
    taken.update(
        s
        for s in reserved
        if not any(h.state is HolderState.TERMINATING for h in by_slot.get(s, ()))
    )
    slot = next((s for s in range(limit) if s not in taken), None)
    if slot is None:
        raise ValueError("no free slot")  # pragma: no cover - ten thousand replicas
    holders_of_slot = by_slot.get(slot, [])
    terminating = [h for h in holders_of_slot if h.state is HolderState.TERMINATING]
    if terminating:
        return SlotChoice(slot, min(h.name for h in terminating), waits=True)
    used = {h.name for h in holders_of_slot} | set(taken_names)
    for attempt in range(_MAX_NAMES):
        name = slot_pod_name(identity, slot, attempt)
        if name not in used:
            return SlotChoice(slot, name)
    raise ValueError(f"slot {slot}: {_MAX_NAMES} finished pods keep its names")
