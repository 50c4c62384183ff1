"""The controller SIGKILLed between seeing a pod and creating its PVC, at seeded points: before
the PVC's GET, after it, before the POST, after the POST (tests/operator/apps/
fault_controller.py). Cases chain: each restarted controller is the next case's faulty one
and meets the pods its predecessor left half done; a clean controller ends the chain. Every
claim must exist once, owned by its workload."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from kubehelpers import Kube, eventually
from opfaults import TALLY, NamespaceFactory, Workload, create_all, verify

from podckpt.devtools.operator_replicas import ReplicatedOperator

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]

FAULTY = [sys.executable, str(Path(__file__).parents[1] / "apps" / "fault_controller.py")]
POINTS = ("seen", "checked", "create", "created")
CASES = 12


def test_controller_killed_between_seeing_a_pod_and_creating_its_pvc(
    kube: Kube, namespaces: NamespaceFactory, replicated: ReplicatedOperator, seed: int
) -> None:
    rng = random.Random(seed)
    namespace = namespaces()
    placed = []
    replicated.stop_controller()
    try:
        for case in range(CASES):
            point = POINTS[case % len(POINTS)]
            n = rng.randint(1, 5)  # each case brings 5 new claims: the point is always reached
            batch = [Workload("StatefulSet", f"s{case}", 3), Workload("Deployment", f"d{case}", 2)]
            replicated.start_controller(
                argv=FAULTY, env={"CONTROLLER_FAULT": f"{point}:{n}"}, wait=False
            )
            create_all(kube, [(namespace, w) for w in batch])
            placed += [(namespace, w) for w in batch]
            proc = replicated.controller
            assert proc is not None
            eventually(
                lambda p=proc: p.poll() is not None, timeout=60, what=f"the kill at {point}:{n}"
            )
            assert proc.returncode == -9, f"case {case} ({point}:{n}) ended {proc.returncode}"
            TALLY.add(f"controller-sigkill-{point}")
    finally:
        replicated.start_controller()
    verify(kube, placed, timeout=60)
    provisioned = {
        e.involved_object.name
        for e in kube.core.list_namespaced_event(namespace).items
        if e.reason == "VolumeProvisioned"
    }
    pods = {p["metadata"]["name"] for p in kube.pods(namespace)}
    TALLY.notes.append(
        f"controller SIGKILL: {CASES} kills; pods without a VolumeProvisioned event:"
        f" {len(pods - provisioned)} of {len(pods)} (their PVC was created by a killed"
        " controller, or found by its successor)"
    )
