"""Smoke tests of the apiserver tier: the real API machinery the operator relies on.

Admission (service accounts, a kopf webhook served from this process), RBAC with a
service-account token, and dynamic PVC binding by the default StorageClass.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from kubernetes import client

from podckpt.devtools.cluster import components
from podckpt.devtools.cluster.cluster import STORAGE_CLASS, Cluster

pytestmark = [pytest.mark.apiserver]


@pytest.fixture
def namespace(apiserver_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    name = "smoke-" + request.node.name.replace("_", "-")[5:40].strip("-").lower()
    yield apiserver_cluster.create_namespace(name)
    apiserver_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_namespace_and_pod_are_admitted(apiserver_cluster: Cluster, namespace: str) -> None:
    with apiserver_cluster.api_client() as api:
        core = client.CoreV1Api(api)
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="p"),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="c", image="podckpt.local/none:1")]
            ),
        )
        created = core.create_namespaced_pod(namespace, pod)
    # The ServiceAccount admission plugin ran: the token volume is injected.
    assert created.spec is not None
    assert created.status is not None
    assert created.spec.service_account_name == "default"
    assert any(v.projected for v in created.spec.volumes or [])
    assert created.status.phase == "Pending"


def test_default_storage_class_binds_a_pvc(apiserver_cluster: Cluster, namespace: str) -> None:
    apiserver_cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input="""
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 16Mi}}
""",
    )
    components.wait_until(
        "PVC Bound",
        lambda: (
            apiserver_cluster.kubectl(
                "get", "pvc", "data", "-n", namespace, "-o", "jsonpath={.status.phase}"
            ).stdout
            == "Bound"
        ),
        60,
    )
    sc = apiserver_cluster.kubectl(
        "get", "pvc", "data", "-n", namespace, "-o", "jsonpath={.spec.storageClassName}"
    ).stdout
    assert sc == STORAGE_CLASS


def test_serviceaccount_token_kubeconfig_obeys_rbac(
    apiserver_cluster: Cluster, namespace: str
) -> None:
    kubeconfig = apiserver_cluster.token_kubeconfig(namespace, "operator")

    def can_list() -> bool:
        with apiserver_cluster.api_client(kubeconfig) as api:
            try:
                client.CoreV1Api(api).list_namespaced_config_map(namespace)
            except client.ApiException as e:
                if e.status != 403:
                    raise
                return False
            return True

    assert not can_list()
    apiserver_cluster.kubectl(
        "create", "rolebinding", "op", "-n", namespace,
        "--clusterrole=view", f"--serviceaccount={namespace}:operator",
    )  # fmt: skip
    components.wait_until("RBAC to allow the service account", can_list, 20)


def test_kopf_admission_webhook_is_called(apiserver_cluster: Cluster, namespace: str) -> None:
    cert = apiserver_cluster.serving_cert("smoke-webhook", ("127.0.0.1",))
    port = components.free_port()
    config_name = "podckpt-smoke.podckpt.dev"
    registry = kopf.OperatorRegistry()
    seen: list[str] = []

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(
            server=apiserver_cluster.server,
            ca_path=str(apiserver_cluster.ca_path),
            certificate_path=str(apiserver_cluster.pki_dir / "admin.crt"),
            private_key_path=str(apiserver_cluster.pki_dir / "admin.key"),
        )

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.admission.server = kopf.WebhookServer(
            addr="127.0.0.1",
            port=port,
            host="127.0.0.1",
            certfile=str(cert.cert),
            pkeyfile=str(cert.key),
            cafile=str(apiserver_cluster.ca_path),
        )
        settings.admission.managed = config_name
        settings.posting.enabled = False

    @kopf.on.validate(
        "configmaps",
        id="smoke",
        registry=registry,
        labels={"podckpt-smoke": kopf.PRESENT},
        ignore_failures=True,
    )
    def validate(body: kopf.Body, **_: Any) -> None:
        seen.append(body["metadata"]["name"])
        if body["metadata"]["labels"]["podckpt-smoke"] == "deny":
            raise kopf.AdmissionError("the podckpt smoke webhook says no")

    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=lambda: asyncio.run(
            kopf.operator(
                registry=registry,
                standalone=True,
                clusterwide=True,
                ready_flag=ready,
                stop_flag=stop,
            )
        ),
        daemon=True,
    )
    thread.start()
    try:
        assert ready.wait(30), "kopf did not start"
        components.wait_until(
            "kopf to register the webhook",
            lambda: (
                apiserver_cluster.kubectl(
                    "get", "validatingwebhookconfiguration", config_name, check=False
                ).returncode
                == 0
            ),
            30,
        )
        # The apiserver picks the new configuration up within a second or so: probe with
        # allowed objects until one reaches the webhook.
        probes = iter(range(1000))

        def probe_reaches_webhook() -> bool:
            name = f"probe-{next(probes)}"
            apiserver_cluster.kubectl(
                "create", "-n", namespace, "-f", "-",
                input="{apiVersion: v1, kind: ConfigMap, metadata: "
                f"{{name: {name}, labels: {{podckpt-smoke: 'yes'}}}}}}",
            )  # fmt: skip
            return name in seen

        components.wait_until("the webhook to be called", probe_reaches_webhook, 30, interval=0.5)
        denied = apiserver_cluster.kubectl(
            "create", "-n", namespace, "-f", "-", check=False,
            input="{apiVersion: v1, kind: ConfigMap, metadata: "
            "{name: bad, labels: {podckpt-smoke: deny}}}",
        )  # fmt: skip
        assert denied.returncode != 0
        assert "the podckpt smoke webhook says no" in denied.stderr
        assert "bad" in seen
    finally:
        stop.set()
        thread.join(30)
        apiserver_cluster.kubectl(
            "delete", "validatingwebhookconfiguration", config_name, "--ignore-not-found"
        )


def test_a_half_dead_control_plane_restarts_clean_and_keeps_the_logs_of_what_died(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """What the fixtures do when a fault test left a kube-apiserver dead: the next `up` starts
    the tier again from scratch. The dead process's log stays (the new one appends to it) and
    restarts.log names what had died: the evidence a mid-session restart used to delete."""
    state = tmp_path_factory.mktemp("half-dead")
    c = Cluster(state / "cluster", name="half-dead")
    try:
        c.up_apiserver()
        apiserver = c.process("kube-apiserver")
        assert apiserver is not None
        first_log = Path(apiserver.log).read_text()
        os.kill(apiserver.pid, signal.SIGKILL)
        components.wait_until("kube-apiserver gone", lambda: not apiserver.alive(), 30)
        c.up_apiserver()
        restarted = c.process("kube-apiserver")
        assert restarted is not None
        assert restarted.alive()
        assert restarted.pid != apiserver.pid
        assert Path(restarted.log).read_text().startswith(first_log[:200])
        restarts = (c.logs_dir / "restarts.log").read_text()
        assert "the apiserver tier was found half-dead" in restarts
        assert "kube-apiserver" in restarts.split("dead:")[1]
        assert c.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    finally:
        c.down()
