"""High availability of the controller on the real API server: two replicas, one Lease; the
leader acts, the standby does not; when the leader dies the standby takes over and acts
(creates the next checkpoint volume). Both serve kopf's /healthz and /metrics."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubehelpers import Kube, eventually
from kubernetes import client
from test_controller import _statefulset

from podckpt.devtools.operator_harness import NAMESPACE, Operator, free_port

pytestmark = pytest.mark.apiserver

LEASE = "podckpt-controller"


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _metric(port: int, name: str) -> float | None:
    status, text = _get(port, "/metrics")
    if status != 200:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


class Replica:
    def __init__(self, operator: Operator, name: str) -> None:
        self.name = name
        self.metrics, self.health = free_port(), free_port()
        env = {
            **operator._env("podckpt-controller"),
            "PODCKPT_LEADER_ELECTION": "true",
            "PODCKPT_POD_NAME": name,
            "PODCKPT_LEASE_DURATION_SECONDS": "4",
            "PODCKPT_LEASE_RENEW_DEADLINE_SECONDS": "3",
            "PODCKPT_LEASE_RETRY_SECONDS": "0.5",
            "PODCKPT_METRICS_PORT": str(self.metrics),
            "PODCKPT_HEALTH_PORT": str(self.health),
        }
        self.log = operator.logs / f"controller-{name}.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "podckpt.operator.controller"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def healthy(self) -> dict[str, Any] | None:
        status, body = _get(self.health, "/healthz")
        return json.loads(body) if status == 200 else None

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


@pytest.fixture
def replicas(operator: Operator) -> Iterator[tuple[Replica, Replica]]:
    operator.stop_controller()
    a = Replica(operator, "replica-a")
    eventually(a.healthy, timeout=30, what="replica-a healthy")
    b = Replica(operator, "replica-b")
    try:
        eventually(b.healthy, timeout=30, what="replica-b healthy")
        yield a, b
    finally:
        a.stop()
        b.stop()
        operator.start_controller()


def _holder(kube: Kube) -> str | None:
    try:
        lease = client.CoordinationV1Api(kube.api).read_namespaced_lease(LEASE, NAMESPACE)
    except client.ApiException:
        return None  # not created yet
    return str(lease.spec.holder_identity) if lease.spec.holder_identity else None


def test_one_leader_acts_and_the_standby_takes_over(
    kube: Kube, namespace: str, replicas: tuple[Replica, Replica]
) -> None:
    a, b = replicas
    eventually(lambda: _holder(kube) == "replica-a", timeout=20, what="replica-a holds the lease")
    assert eventually(lambda: _metric(a.metrics, "podckpt_controller_leader") == 1.0, timeout=10)
    assert _metric(b.metrics, "podckpt_controller_leader") == 0.0
    # kopf answers /healthz from its probes' results of up to 10 s ago: the fixture's first
    # call may have cached "not leading" from before the lease was acquired (seen in CI).
    leader_health = eventually(
        lambda: (h := a.healthy()) and h["controller"]["leading"] and h,
        timeout=20,
        what="replica-a's /healthz says it leads",
    )
    assert leader_health == {
        "controller": {"leading": True, "lease_contact_s": pytest.approx(0, abs=5)}
    }
    standby = b.healthy()
    assert standby is not None
    assert standby["controller"]["leading"] is False

    kube.apps.create_namespaced_stateful_set(namespace, _statefulset("before", {}, "64Mi"))
    eventually(
        lambda: kube.pvc(namespace, "podckpt-statefulset-before-0"), what="PVC by the leader"
    )
    assert (_metric(a.metrics, "podckpt_volumes_provisioned_total") or 0) >= 1
    assert not _metric(b.metrics, "podckpt_volumes_provisioned_total")

    a.stop(signal.SIGKILL)  # no clean release: the standby must wait out the lease
    eventually(lambda: _holder(kube) == "replica-b", timeout=20, what="replica-b takes the lease")
    kube.apps.create_namespaced_stateful_set(namespace, _statefulset("after", {}, "64Mi"))
    eventually(
        lambda: kube.pvc(namespace, "podckpt-statefulset-after-0"),
        timeout=30,
        what="PVC by the new leader",
    )
    assert _metric(b.metrics, "podckpt_controller_leader") == 1.0


def test_webhook_restores_a_blanked_ca_bundle(kube: Kube, operator: Operator) -> None:
    """`kubectl apply -k config/` or `helm upgrade` re-applies the webhook configuration
    without our CA: each replica writes it back (here within a second), so the fail-closed
    webhook does not stay unreachable for the API server."""
    del operator
    admission = client.AdmissionregistrationV1Api(kube.api)
    config = admission.read_mutating_webhook_configuration("podckpt")
    ca = config.webhooks[0].client_config.ca_bundle
    assert ca
    for webhook in config.webhooks:
        webhook.client_config.ca_bundle = None
    admission.replace_mutating_webhook_configuration("podckpt", config)
    blanked = admission.read_mutating_webhook_configuration("podckpt")
    assert all(not w.client_config.ca_bundle for w in blanked.webhooks)

    def restored() -> bool:
        now = admission.read_mutating_webhook_configuration("podckpt")
        return all(w.client_config.ca_bundle == ca for w in now.webhooks)

    eventually(restored, timeout=20, what="the caBundle written back")
