"""The operator under faults (issue 16.3), one scenario per test; conftest.py says what runs
and what every scenario checks at its end (`opfaults.verify`).

- a burst: 200 pod creations across Deployments, StatefulSets and Jobs, through two webhook
  replicas, some pods opted in by a namespace created just before;
- the kube-apiserver restarted (killed, or shut down gracefully as in an upgrade) while the
  controller provisions volumes, and while the webhook admits a burst: the operator's
  processes keep running and must find their way back (watches, connection pools) and finish
  what the restart interrupted;
- the controller SIGKILLed between seeing a pod and creating its PVC, at seeded points: before
  the PVC's GET, after it, before the POST, after the POST (apps/fault_controller.py). Cases
  chain: each restarted controller is the next case's faulty one and meets the pods its
  predecessor left half done; a clean controller ends the chain;
- a webhook replica SIGKILLed during a burst. As in a cluster: the Service keeps sending it
  new connections until its endpoint is removed (1-3 s later, drawn), admissions in flight on
  it fail (failure policy Fail: the pod is not created, its controller retries), and its
  replacement joins the endpoints once it serves. Meanwhile the other replica admits alone,
  without the killed one's slot reservations: only the pod names keep the slots apart.
"""

from __future__ import annotations

import datetime as dt
import random
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubehelpers import Kube, eventually
from opfaults import (
    ON,
    TALLY,
    NamespaceFactory,
    Workload,
    create_all,
    mix,
    peak_in_flight,
    refused_creations,
    restart_apiserver,
    verify,
)

from podckpt.devtools.operator_replicas import ReplicatedOperator

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]

#: Few large workloads: a controller creates a workload's pods in growing parallel batches
#: (1, 2, 4, 8, ...), so 25 pods each make more creations at once than 10 would.
BURST_KINDS = {"Deployment": 2, "StatefulSet": 1, "IndexedJob": 1}


def test_burst_of_200_pods(
    kube: Kube, namespaces: NamespaceFactory, replicated: ReplicatedOperator
) -> None:
    since = dt.datetime.now()
    labelled = namespaces()
    # the namespace default: its pods carry no label; the namespace is brand new, so the
    # webhook replicas learn about it from their watch while its pods are being admitted
    defaulted = namespaces(ON, wait_sa=False)
    placed = [(labelled, w) for w in mix("a", 25, BURST_KINDS)]
    placed += [(defaulted, w) for w in mix("b", 25, BURST_KINDS, opt_in=False)]
    assert sum(w.pods for _, w in placed) == 200
    create_all(kube, placed)
    verdict = verify(kube, placed, timeout=180)
    assert verdict.pods == 200
    peak = peak_in_flight(
        [replicated.logs / f"webhook-{i}.log" for i in range(len(replicated.replicas))], since
    )
    TALLY.add("burst-pods", verdict.pods)
    TALLY.notes.append(
        f"burst: 200 pods from {len(placed)} workloads, peak {peak} admissions in flight"
    )


RESTART_KINDS = {"StatefulSet": 2, "Deployment": 2, "IndexedJob": 1}  # 50 pods, 50 claims


def _claims(kube: Kube, namespace: str) -> int:
    return len(kube.core.list_namespaced_persistent_volume_claim(namespace).items)


def _pods(kube: Kube, namespace: str) -> int:
    return len(kube.core.list_namespaced_pod(namespace).items)


def _when(count: Any, at_least: int, timeout: float = 60) -> int:
    """Poll `count()` quickly until it reaches `at_least`; its value then."""
    deadline = time.monotonic() + timeout
    while (value := count()) < at_least:
        assert time.monotonic() < deadline, f"never reached {at_least} (last {value})"
        time.sleep(0.05)
    return int(value)


@pytest.mark.parametrize("crash", [True, False], ids=["sigkill", "sigterm"])
def test_apiserver_restarted_while_the_controller_provisions(
    kube: Kube,
    namespaces: NamespaceFactory,
    replicated: ReplicatedOperator,
    apiserver_cluster: Any,
    seed: int,
    crash: bool,
) -> None:
    rng = random.Random(f"{seed}-provision-{crash}")
    namespace = namespaces()
    placed = [(namespace, w) for w in mix("p", 10, RESTART_KINDS)]
    # every pod admitted first, with the controller stopped: then only provisioning runs
    replicated.stop_controller()
    create_all(kube, placed)
    eventually(lambda: _pods(kube, namespace) == 50, timeout=120, what="50 pods")
    at = rng.randint(1, 25)
    replicated.start_controller()
    before = _when(lambda: _claims(kube, namespace), at)
    down = restart_apiserver(apiserver_cluster, crash=crash)
    verify(kube, placed, timeout=120)
    TALLY.add("apiserver-restart-provisioning")
    TALLY.notes.append(
        f"API server {'killed' if crash else 'shut down'} while provisioning: restart after"
        f" {before} of 50 claims, down {down:.1f} s"
    )


@pytest.mark.parametrize("crash", [True, False], ids=["sigkill", "sigterm"])
def test_apiserver_restarted_while_the_webhook_admits(
    kube: Kube,
    namespaces: NamespaceFactory,
    replicated: ReplicatedOperator,
    apiserver_cluster: Any,
    seed: int,
    crash: bool,
) -> None:
    del replicated
    rng = random.Random(f"{seed}-admit-{crash}")
    namespace = namespaces()
    placed = [(namespace, w) for w in mix("a", 10, RESTART_KINDS)]
    at = rng.randint(1, 35)
    create_all(kube, placed)
    before = _when(lambda: _pods(kube, namespace), at)
    down = restart_apiserver(apiserver_cluster, crash=crash)
    verdict = verify(kube, placed, timeout=120)
    TALLY.add("apiserver-restart-admission")
    TALLY.notes.append(
        f"API server {'killed' if crash else 'shut down'} while admitting: restart after"
        f" {before} of 50 pods, down {down:.1f} s, {refused_creations(kube, namespace)}"
        f" creations refused and retried, {len(verdict.kept_claims)} slot claim(s) of pods"
        " deleted as surplus kept"
    )


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


WEBHOOK_KINDS = {"Deployment": 5, "StatefulSet": 3, "IndexedJob": 2}  # 100 pods
RUNS = 2


def test_webhook_replica_killed_during_a_burst(
    kube: Kube, namespaces: NamespaceFactory, replicated: ReplicatedOperator, seed: int
) -> None:
    rng = random.Random(f"{seed}-webhook")
    for run in range(RUNS):
        namespace = namespaces()
        placed = [(namespace, w) for w in mix(f"w{run}-", 10, WEBHOOK_KINDS)]
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
