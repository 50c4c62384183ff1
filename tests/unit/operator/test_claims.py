"""Whether a checkpoint PVC is usable by a new pod (operator.domain.claims), and the gate the
webhook puts on a pod that must wait for it."""

from __future__ import annotations

from typing import Any

from podckpt.operator.controller.claims import gated
from podckpt.operator.domain.claims import ClaimState, claim_state, describe
from podckpt.operator.settings import OperatorSettings
from podckpt.operator.webhook.decide import Namespace as NS
from podckpt.operator.webhook.decide import Plan, plan
from podckpt.operator.webhook.inject import build

WORKLOAD = "uid-new"


def _claim(**meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "podckpt-statefulset-db-0", **meta}}


def test_states() -> None:
    assert claim_state(None, WORKLOAD) is ClaimState.MISSING
    assert claim_state(_claim(), WORKLOAD) is ClaimState.READY  # orphaned: taken again
    owned = _claim(ownerReferences=[{"uid": WORKLOAD}])
    assert claim_state(owned, WORKLOAD) is ClaimState.READY
    # the same name, a deleted workload's: garbage collection removes it
    stale = _claim(ownerReferences=[{"uid": "uid-old"}])
    assert claim_state(stale, WORKLOAD) is ClaimState.STALE
    # Terminating is never present, whoever owns it
    going = _claim(ownerReferences=[{"uid": WORKLOAD}], deletionTimestamp="2026-12-01T00:00:00Z")
    assert claim_state(going, WORKLOAD) is ClaimState.TERMINATING
    assert "being deleted" in describe(ClaimState.TERMINATING, "c")
    assert "deleted workload" in describe(ClaimState.STALE, "c")


def test_a_gated_pod_waits_for_its_volume(make_pod: Any) -> None:
    op = OperatorSettings()
    pod = make_pod(name="db-0", owner="statefulset", labels={"memverge.ai/checkpoint-mode": "true"})
    planned = plan(pod, NS("ns"), op)
    assert isinstance(planned, Plan)
    waiting = build(pod, planned, {}, op, gate=True)
    assert waiting["spec"]["schedulingGates"] == [{"name": "podckpt.io/checkpoint-volume"}]
    assert gated(waiting, op.gate_name) == 0
    assert "schedulingGates" not in build(pod, planned, {}, op)["spec"]


def test_a_pod_on_its_own_volume_never_waits(make_pod: Any) -> None:
    op = OperatorSettings()
    pod = make_pod(
        name="solo",
        labels={"memverge.ai/checkpoint-mode": "true"},
        annotations={"memverge.ai/checkpoint-storage-volume": "ckpt"},
        volumes=[{"name": "ckpt", "persistentVolumeClaim": {"claimName": "mine"}}],
    )
    planned = plan(pod, NS("ns"), op)
    assert isinstance(planned, Plan)
    assert "schedulingGates" not in build(pod, planned, {}, op, gate=True)["spec"]
