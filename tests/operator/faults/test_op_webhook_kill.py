"""A webhook replica SIGKILLed during a burst of pod creations. As in a cluster: the Service
keeps sending it new connections until its endpoint is removed (1-3 s later, drawn), admissions
in flight on it fail (failure policy Fail: the pod is not created, its controller retries), and
its replacement joins the endpoints once it serves. Meanwhile the other replica admits alone,
without the killed one's slot reservations: only the pod names keep the slots apart."""

from __future__ import annotations

import random
import time

import pytest
from kubehelpers import Kube
from opfaults import TALLY, NamespaceFactory, create_all, mix, refused_creations, verify

from podckpt.devtools.operator_replicas import ReplicatedOperator

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]

KINDS = {"Deployment": 5, "StatefulSet": 3, "IndexedJob": 2}  # 100 pods
RUNS = 2


def test_webhook_replica_killed_during_a_burst(
    kube: Kube, namespaces: NamespaceFactory, replicated: ReplicatedOperator, seed: int
) -> None:
    rng = random.Random(f"{seed}-webhook")
    for run in range(RUNS):
        namespace = namespaces()
        placed = [(namespace, w) for w in mix(f"w{run}-", 10, KINDS)]
        victim, other = run % 2, 1 - run % 2
        at = rng.randint(5, 60)
        lag = rng.uniform(1, 3)
        create_all(kube, placed)
        deadline = time.monotonic() + 60
        while len(kube.core.list_namespaced_pod(namespace).items) < at:
            assert time.monotonic() < deadline, f"fewer than {at} pods after 60 s"
            time.sleep(0.05)
        replicated.kill_replica(victim)
        time.sleep(lag)  # the EndpointSlice controller notices the dead pod
        replicated.set_endpoints([other])
        replicated.start_replica(victim)
        replicated.set_endpoints([0, 1])
        verify(kube, placed, timeout=120)
        TALLY.add("webhook-replica-sigkill")
        TALLY.notes.append(
            f"webhook replica {victim} killed after {at} of 100 pods, endpoint removed"
            f" {lag:.1f} s later: {refused_creations(kube, namespace)} creations refused"
            " and retried"
        )
