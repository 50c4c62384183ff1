"""The kube-apiserver restarted (killed, or shut down gracefully as in an upgrade) while the
controller provisions volumes, and while the webhook admits a burst of pods. The operator's
processes keep running: they must find their way back (watches, connection pools) and finish
what the restart interrupted."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from kubehelpers import Kube, eventually
from opfaults import (
    TALLY,
    NamespaceFactory,
    create_all,
    mix,
    refused_creations,
    restart_apiserver,
    verify,
)

from podckpt.devtools.operator_replicas import ReplicatedOperator

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]

KINDS = {"StatefulSet": 2, "Deployment": 2, "IndexedJob": 1}  # 50 pods, 50 claims


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
    placed = [(namespace, w) for w in mix("p", 10, KINDS)]
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
    placed = [(namespace, w) for w in mix("a", 10, KINDS)]
    at = rng.randint(1, 35)
    create_all(kube, placed)
    before = _when(lambda: _pods(kube, namespace), at)
    down = restart_apiserver(apiserver_cluster, crash=crash)
    verify(kube, placed, timeout=120)
    TALLY.add("apiserver-restart-admission")
    TALLY.notes.append(
        f"API server {'killed' if crash else 'shut down'} while admitting: restart after"
        f" {before} of 50 pods, down {down:.1f} s, {refused_creations(kube, namespace)}"
        " creations refused and retried"
    )
