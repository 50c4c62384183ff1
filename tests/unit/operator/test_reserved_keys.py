"""The controller's claim for a pod is recomputed from the pod, never taken from podckpt.io/*
annotations that its creator may have written (domain/claims.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from podckpt.operator.domain.reserved import UntrustedClaim, trusted_claim
from podckpt.operator.domain.slots import SlotChoice
from podckpt.operator.settings import OperatorSettings
from podckpt.operator.webhook.decide import Namespace, Plan, plan
from podckpt.operator.webhook.inject import build

ON = {"memverge.ai/checkpoint-mode": "true"}


def _injected(make_pod: Any, op: OperatorSettings, **kwargs: Any) -> dict[str, Any]:
    pod = make_pod(labels=ON, **kwargs)
    planned = plan(pod, Namespace("ns"), op)
    assert isinstance(planned, Plan)
    slot = SlotChoice(2, "web-slot-2") if planned.identity.needs_slot else None
    return build(pod, planned, {}, op, slot=slot)


def _check(pod: dict[str, Any], op: OperatorSettings) -> str:
    return trusted_claim(pod, op.annotation("claim"), op.annotation("slot")).claim


def test_what_the_webhook_wrote_is_trusted(make_pod: Any, op: OperatorSettings) -> None:
    statefulset = _injected(make_pod, op, name="db-0", owner="statefulset")
    assert _check(statefulset, op) == "podckpt-statefulset-db-0"
    pod = make_pod(name=None, owner="replicaset", labels={**ON, "pod-template-hash": "5d4f8"})
    planned = plan(pod, Namespace("ns"), op)
    assert isinstance(planned, Plan)
    built = build(pod, planned, {}, op, slot=SlotChoice(2, "web-slot-2"))
    assert _check(built, op) == "podckpt-deployment-web-2"


def test_a_forged_claim_name_is_refused(make_pod: Any, op: OperatorSettings) -> None:
    pod = _injected(make_pod, op, name="db-0", owner="statefulset")
    forged = copy.deepcopy(pod)
    forged["metadata"]["annotations"][op.annotation("claim")] = "data-postgres-0"
    for volume in forged["spec"]["volumes"]:
        if volume["name"] == "podckpt-store":
            volume["persistentVolumeClaim"]["claimName"] = "data-postgres-0"
    with pytest.raises(UntrustedClaim, match="not this pod's checkpoint volume"):
        _check(forged, op)


def test_a_plain_pod_claiming_a_volume_is_refused(make_pod: Any, op: OperatorSettings) -> None:
    pod = make_pod(
        name="solo",
        annotations={"podckpt.io/injected": "v1", "podckpt.io/claim": "podckpt-pod-solo"},
        volumes=[
            {"name": "podckpt-store", "persistentVolumeClaim": {"claimName": "podckpt-pod-solo"}}
        ],
    )
    with pytest.raises(UntrustedClaim, match="no StatefulSet"):
        _check(pod, op)


def test_a_claim_the_pod_does_not_mount_is_refused(make_pod: Any, op: OperatorSettings) -> None:
    pod = make_pod(
        name="db-0",
        owner="statefulset",
        annotations={"podckpt.io/injected": "v1", "podckpt.io/claim": "podckpt-statefulset-db-0"},
    )
    with pytest.raises(UntrustedClaim, match="does not mount it"):
        _check(pod, op)


def test_a_slot_pod_without_its_slot_label_is_refused(make_pod: Any, op: OperatorSettings) -> None:
    pod = make_pod(name=None, owner="replicaset", labels={**ON, "pod-template-hash": "5d4f8"})
    planned = plan(pod, Namespace("ns"), op)
    assert isinstance(planned, Plan)
    built = build(pod, planned, {}, op, slot=SlotChoice(2, "web-slot-2"))
    del built["metadata"]["labels"][op.annotation("slot")]
    with pytest.raises(UntrustedClaim, match=r"without a podckpt\.io/slot label"):
        _check(built, op)
