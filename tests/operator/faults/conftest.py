"""The operator under faults (issue 16.3): the real API server, controller-manager, webhook and
controller, with the API server restarted, the controller and a webhook replica SIGKILLed, and
bursts of pod creations. Every scenario ends with the same check (`opfaults.verify`): 0
duplicate slots, 0 duplicate or missing PVCs, 0 pods admitted uninjected. The session prints
one summary line (docs/reliability.md).

The operator runs as a cluster runs it: two webhook replicas behind a Service stand-in
(`podckpt.devtools.operator_replicas`), one controller. It takes over from the session's
one-replica operator (tests/operator/conftest.py) for the module's tests and hands it back
afterwards (the other operator tests stop that one's webhook to test the failure policy).

Seeded: FAULT_SEED (default 16) chooses every kill point and restart moment.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubehelpers import Kube, eventually
from kubernetes import client
from opfaults import CLASS, SEED, TALLY, NamespaceFactory

from podckpt.devtools import faultsummary
from podckpt.devtools.operator_harness import Operator
from podckpt.devtools.operator_replicas import ReplicatedOperator


@pytest.fixture(scope="module")
def replicated(
    apiserver_cluster: Any, operator: Operator, kube: Kube
) -> Iterator[ReplicatedOperator]:
    operator.uninstall()
    # Late binding: the controller lets a pod through as soon as its PVC exists
    kube.storage.create_storage_class(
        {
            "metadata": {"name": CLASS},
            "provisioner": "example.invalid/never-binds",
            "volumeBindingMode": "WaitForFirstConsumer",
        }
    )
    TALLY.clock.start()  # the suite's own time, not the session's
    rep = ReplicatedOperator(apiserver_cluster, replicas=2)
    try:
        rep.install()
        rep.start_webhook()
        rep.start_controller()
        yield rep
    finally:
        rep.uninstall()
        with contextlib.suppress(client.ApiException):
            kube.storage.delete_storage_class(CLASS)
        operator.install()
        operator.start_webhook()
        operator.start_controller()


@pytest.fixture
def namespaces(kube: Kube, replicated: ReplicatedOperator) -> Iterator[NamespaceFactory]:
    """Make namespaces (with labels); all are deleted after the test."""
    del replicated
    made: list[str] = []

    def make(labels: dict[str, str] | None = None, *, wait_sa: bool = True) -> str:
        name = f"f-{uuid.uuid4().hex[:8]}"
        kube.core.create_namespace({"metadata": {"name": name, "labels": labels or {}}})
        made.append(name)
        if wait_sa:
            eventually(
                lambda: any(
                    sa.metadata.name == "default"
                    for sa in kube.core.list_namespaced_service_account(name).items
                ),
                what="default service account",
            )
        return name

    yield make
    for name in made:
        with contextlib.suppress(client.ApiException):
            kube.core.delete_namespace(name)


@pytest.fixture
def seed() -> int:
    return SEED


def pytest_runtest_teardown() -> None:
    """A test of this folder has ended: the suite's time runs at least until here."""
    TALLY.clock.lap()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    faultsummary.write(
        terminalreporter,
        folder=Path(__file__).parent,
        title="operator fault summary",
        cases=TALLY.cases,
        checked=f", {TALLY.pods} pods checked",
        promise="0 duplicate slots, 0 duplicate or missing PVCs, 0 pods admitted uninjected",
        seed=SEED,
        clock=TALLY.clock,
        notes=TALLY.notes,
        note_title="operator fault note",
    )
