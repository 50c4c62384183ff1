"""Deployment and ReplicaSet slots, handed out at admission without side effects.

Live slot holders come from a quorum LIST of the group's pods; admissions of this webhook
replica whose pods are not in that list yet are kept as short-lived reservations.
Choosing and reserving happen without an `await` in between, so concurrent admissions in one
process cannot take the same slot. Across webhook replicas, the slot is the pod's name, and the
API server refuses a second pod of that name: the loser's controller retries, and the next
admission sees the slot taken. See docs/architecture.md, "Identity".
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from podckpt.operator.domain.identity import choose_slot


class SlotBook:
    """Reservations of the slots handed out by this process and not yet seen live."""

    def __init__(self, ttl_seconds: float) -> None:
        self._ttl = ttl_seconds
        self._reserved: dict[tuple[str, str], dict[int, float]] = {}

    def assign(
        self,
        namespace: str,
        group: str,
        holders: Iterable[tuple[int, bool]],
        *,
        reserve: bool = True,
    ) -> int:
        """The slot for a new pod of `group`; `holders` are (slot, terminating) of live pods."""
        now = time.monotonic()
        held: dict[int, bool] = {}
        for slot, terminating in holders:
            held[slot] = held.get(slot, True) and terminating
        key = (namespace, group)
        reservations = {
            slot: expiry
            for slot, expiry in self._reserved.get(key, {}).items()
            if expiry > now and held.get(slot, True)
        }
        slot = choose_slot(held, reservations)
        # A slot still held by a terminating pod is not reserved: the pod name serializes the
        # contenders, and the replacement's retries must get it once the old pod is gone.
        if reserve and slot not in held:
            reservations[slot] = now + self._ttl
        if reservations:
            self._reserved[key] = reservations
        else:
            self._reserved.pop(key, None)
        return slot

    def reserved(self, namespace: str, group: str) -> Mapping[int, float]:
        return dict(self._reserved.get((namespace, group), {}))
