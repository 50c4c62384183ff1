"""200 pod creations at once across Deployments, StatefulSets and Jobs (some of them in a
namespace that asks for checkpointing by its own label, created just before), through two
webhook replicas: every pod injected, every Deployment slot held once, every PVC there once."""

from __future__ import annotations

import datetime as dt

import pytest
from kubehelpers import Kube
from opfaults import ON, TALLY, NamespaceFactory, create_all, mix, peak_in_flight, verify

from podckpt.devtools.operator_replicas import ReplicatedOperator

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]

#: Few large workloads: a controller creates a workload's pods in growing parallel batches
#: (1, 2, 4, 8, ...), so 25 pods each make more creations at once than 10 would.
KINDS = {"Deployment": 2, "StatefulSet": 1, "IndexedJob": 1}


def test_burst_of_200_pods(
    kube: Kube, namespaces: NamespaceFactory, replicated: ReplicatedOperator
) -> None:
    since = dt.datetime.now()
    labelled = namespaces()
    # the namespace default: its pods carry no label; the namespace is brand new, so the
    # webhook replicas learn about it from their watch while its pods are being admitted
    defaulted = namespaces(ON, wait_sa=False)
    placed = [(labelled, w) for w in mix("a", 25, KINDS)]
    placed += [(defaulted, w) for w in mix("b", 25, KINDS, opt_in=False)]
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
