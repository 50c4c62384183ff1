"""Deployment and ReplicaSet slots, handed out at admission without side effects.

The rules are pure (`podckpt.operator.domain.slots`); this module keeps the one piece of state
they need: reservations. Slot holders come from a quorum LIST of the group's pods; admissions
of this webhook replica whose pods are not in that list yet are kept as short-lived
reservations. Choosing and reserving happen without an `await` in between, so concurrent
admissions in one process cannot take the same slot. Across webhook replicas, the slot's pod
name is the lock: the API server refuses a second pod of that name, the loser's controller
retries, and the next admission sees the slot taken. See docs/architecture.md, "Identity".
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from podckpt.operator.domain.identity import Identity
from podckpt.operator.domain.slots import Holder, HolderState, SlotChoice, choose_slot


class SlotBook:
    """Reservations of the slots handed out by this process and not yet seen live."""

    def __init__(self, ttl_seconds: float) -> None:
        self._ttl = ttl_seconds
        #: (namespace, slot group) -> slot -> (expiry, the pod name handed out for it)
        self._reserved: dict[tuple[str, str], dict[int, tuple[float, str]]] = {}

    def assign(
        self,
        namespace: str,
        identity: Identity,
        holders: Iterable[Holder],
        *,
        taken_names: Iterable[str] = (),
        reserve: bool = True,
    ) -> SlotChoice:
        """The slot and pod name for a new pod of `identity`'s slot group."""
        now = time.monotonic()
        holders = list(holders)
        # A reservation ends early once its slot is held by a live or terminating pod, or once
        # the pod it was made for is stored, in whatever state: that pod may have finished
        # already (a pod failed by its node's shutdown seconds after its admission), and its
        # replacement must then take the slot under the next name, not the next slot. A
        # finished pod of another name (the predecessor whose slot was handed out again)
        # does not end it.
        held = {h.slot for h in holders if h.state is not HolderState.GONE}
        stored = {h.name for h in holders}
        key = (namespace, identity.slot_group)
        reservations = {
            slot: (expiry, name)
            for slot, (expiry, name) in self._reserved.get(key, {}).items()
            if expiry > now and slot not in held and name not in stored
        }
        choice = choose_slot(identity, holders, reservations, taken_names=taken_names)
        if reserve and not choice.waits:
            reservations[choice.slot] = (now + self._ttl, choice.name)
        if reservations:
            self._reserved[key] = reservations
        else:
            self._reserved.pop(key, None)
        return choice

    def reserved(self, namespace: str, group: str) -> Mapping[int, str]:
        """The slots reserved now, and the pod name each was handed out under."""
        now = time.monotonic()
        return {
            slot: name
            for slot, (expiry, name) in self._reserved.get((namespace, group), {}).items()
            if expiry > now
        }
