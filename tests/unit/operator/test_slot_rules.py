"""Deployment slots: which slot a new replica takes and under which pod name, for every state
its predecessors can be in (docs/architecture.md, "Deployment slots")."""

from __future__ import annotations

import datetime as dt
from typing import Any

from podckpt.operator.domain.identity import Identity, WorkloadKind
from podckpt.operator.domain.slots import (
    LOST_AFTER_DEADLINE,
    Holder,
    HolderState,
    SlotChoice,
    choose_slot,
    holder_state,
    slot_pod_name,
)
from podckpt.operator.webhook.slots import SlotBook

WEB = Identity(WorkloadKind.DEPLOYMENT, "web")
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
LIVE, TERMINATING, GONE = HolderState.LIVE, HolderState.TERMINATING, HolderState.GONE


def pod(phase: str = "Running", deleted: dt.datetime | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "web-slot-0"}
    if deleted is not None:
        meta["deletionTimestamp"] = deleted.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": meta, "status": {"phase": phase}}


def h(slot: int, state: HolderState, attempt: int = 0) -> Holder:
    return Holder(slot, slot_pod_name(WEB, slot, attempt), state)


def test_holder_states() -> None:
    assert holder_state(pod(), NOW) is LIVE
    assert holder_state(pod("Pending"), NOW) is LIVE
    # evicted by the kubelet, shut down with its node, or finished: the name stays, the
    # process tree is gone
    assert holder_state(pod("Failed"), NOW) is GONE
    assert holder_state(pod("Succeeded"), NOW) is GONE
    # deleted: dumping until its deadline (deletion + grace period)
    assert holder_state(pod(deleted=NOW + dt.timedelta(seconds=20)), NOW) is TERMINATING
    assert holder_state(pod(deleted=NOW - LOST_AFTER_DEADLINE / 2), NOW) is TERMINATING
    # still there well past its deadline: its node or kubelet is lost
    lost = NOW - LOST_AFTER_DEADLINE - dt.timedelta(seconds=1)
    assert holder_state(pod(deleted=lost), NOW) is GONE
    # deleted and finished: the kubelet is releasing its volume, the replacement waits for it
    assert holder_state(pod("Failed", deleted=NOW + dt.timedelta(seconds=5)), NOW) is TERMINATING


def test_names() -> None:
    assert slot_pod_name(WEB, 2) == "web-slot-2"
    assert slot_pod_name(WEB, 2, 1) == "web-slot-2-1"


def test_the_lowest_slot_no_live_pod_holds() -> None:
    assert choose_slot(WEB, []) == SlotChoice(0, "web-slot-0")
    assert choose_slot(WEB, [h(0, LIVE), h(1, LIVE)]).slot == 2
    assert choose_slot(WEB, [h(0, LIVE), h(2, LIVE)]).slot == 1


def test_replacement_of_a_terminating_pod_waits_for_its_name() -> None:
    choice = choose_slot(WEB, [h(0, TERMINATING), h(1, LIVE)])
    assert choice == SlotChoice(0, "web-slot-0", waits=True)
    # the same for a terminating pod that had a later name
    assert choose_slot(WEB, [h(0, GONE), h(0, TERMINATING, 1)]) == SlotChoice(
        0, "web-slot-0-1", waits=True
    )


def test_replacement_of_a_failed_or_lost_pod_takes_its_slot_under_the_next_name() -> None:
    """A kubelet-evicted (Failed) pod keeps its name: the replacement restores its slot anyway."""
    assert choose_slot(WEB, [h(0, GONE), h(1, LIVE)]) == SlotChoice(0, "web-slot-0-1")
    assert choose_slot(WEB, [h(0, GONE), h(0, GONE, 1)]) == SlotChoice(0, "web-slot-0-2")
    # names taken by pods without our labels are skipped too
    assert choose_slot(WEB, [h(0, GONE)], taken_names=["web-slot-0-1"]).name == "web-slot-0-2"


def test_a_slot_with_a_live_holder_is_never_handed_out_again() -> None:
    assert choose_slot(WEB, [h(0, GONE), h(0, LIVE, 1)]).slot == 1


def test_reservations_never_hide_a_terminating_slot() -> None:
    assert choose_slot(WEB, [h(0, TERMINATING)], [0]).slot == 0
    assert choose_slot(WEB, [h(0, LIVE)], [1]).slot == 2
    # a reserved slot whose old holder is gone stays reserved (its new pod is on its way)
    assert choose_slot(WEB, [h(0, GONE)], [0]).slot == 1


def test_concurrent_admissions_get_distinct_slots() -> None:
    book = SlotBook(ttl_seconds=60)
    assert [book.assign("ns", WEB, []).slot for _ in range(3)] == [0, 1, 2]


def test_concurrent_replacements_of_failed_pods_get_distinct_slots() -> None:
    book = SlotBook(ttl_seconds=60)
    failed = [h(0, GONE), h(1, GONE)]
    first, second = book.assign("ns", WEB, failed), book.assign("ns", WEB, failed)
    assert (first, second) == (SlotChoice(0, "web-slot-0-1"), SlotChoice(1, "web-slot-1-1"))


def test_reservation_ends_when_the_pod_shows_up_live() -> None:
    book = SlotBook(ttl_seconds=60)
    assert book.assign("ns", WEB, []).slot == 0
    assert book.assign("ns", WEB, [h(0, LIVE)]).slot == 1
    assert set(book.reserved("ns", WEB.slot_group)) == {1}


def test_reservation_ends_when_its_pod_shows_up_finished() -> None:
    """A pod failed by its node's graceful shutdown seconds after its admission (within the
    reservation's lifetime): its replacement takes the same slot under the next name, so it
    restores the checkpoint written at that shutdown (found by the e2e graceful-shutdown test:
    the replacement took slot 1 and started fresh)."""
    book = SlotBook(ttl_seconds=60)
    assert book.assign("ns", WEB, []) == SlotChoice(0, "web-slot-0")
    assert book.assign("ns", WEB, [h(0, GONE)]) == SlotChoice(0, "web-slot-0-1")
    # the reservation now stands for web-slot-0-1, which the finished web-slot-0 does not end
    assert book.reserved("ns", WEB.slot_group) == {0: "web-slot-0-1"}
    assert book.assign("ns", WEB, [h(0, GONE)]) == SlotChoice(1, "web-slot-1")


def test_expired_reservations_are_forgotten() -> None:
    book = SlotBook(ttl_seconds=-1)
    assert book.assign("ns", WEB, []).slot == 0
    assert book.assign("ns", WEB, []).slot == 0


def test_dry_run_reserves_nothing() -> None:
    book = SlotBook(ttl_seconds=60)
    assert book.assign("ns", WEB, [], reserve=False).slot == 0
    assert book.reserved("ns", WEB.slot_group) == {}


def test_replacement_retries_ask_for_the_terminating_slot_until_it_is_free() -> None:
    book = SlotBook(ttl_seconds=60)
    holders = [h(0, TERMINATING), h(1, LIVE)]
    assert book.assign("ns", WEB, holders).waits
    # the replacement's retry (AlreadyExists while the old pod dumps) asks for it again
    assert book.assign("ns", WEB, holders) == SlotChoice(0, "web-slot-0", waits=True)
    # once the old pod is gone the slot is simply free
    assert book.assign("ns", WEB, [h(1, LIVE)]) == SlotChoice(0, "web-slot-0")
