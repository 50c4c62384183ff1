"""The operator logs in again when its service-account token is revoked, as client-go and kopf
do: both processes run with tokens bound to a Secret; deleting the Secret makes the API server
refuse them at once (401), new tokens are written where the processes read their credentials
(their kubeconfig; in a cluster the kubelet rewrites the projected token file), and the webhook
(slot holders through our own client) and the controller (kopf's watch, our client's PVC
create) carry on."""

from __future__ import annotations

import contextlib
import ssl
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubehelpers import Kube, eventually
from kubernetes import client

from podckpt.devtools.cluster import pki
from podckpt.devtools.operator_harness import NAMESPACE, Operator

pytestmark = pytest.mark.apiserver

ACCOUNTS = ("podckpt-webhook", "podckpt-controller")
ON = {"memverge.ai/checkpoint-mode": "true"}


def _refused(cluster: Any, kubeconfig: Path) -> bool:
    """The API server refuses this kubeconfig's token (it caches a token's successful
    authentication for 10 s, so a revocation takes effect within that)."""
    config = yaml.safe_load(kubeconfig.read_text())
    token = config["users"][0]["user"]["token"]
    context = ssl.create_default_context(cafile=str(cluster.pki_dir / "ca.crt"))
    request = urllib.request.Request(
        f"{cluster.server}/api/v1/namespaces/{NAMESPACE}/pods?limit=1",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        urllib.request.urlopen(request, context=context, timeout=10).close()
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    return False


def _bound_kubeconfigs(kube: Kube, cluster: Any, anchor: str, into: Path) -> dict[str, Path]:
    """Kubeconfigs with tokens that die with the Secret `anchor`."""
    secret = kube.core.create_namespaced_secret(
        NAMESPACE, {"metadata": {"name": anchor}, "type": "Opaque"}
    )
    paths = {}
    for account in ACCOUNTS:
        request = kube.core.create_namespaced_service_account_token(
            account,
            NAMESPACE,
            {
                "spec": {
                    "audiences": [],
                    "expirationSeconds": 3600,
                    "boundObjectRef": {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "name": anchor,
                        "uid": secret.metadata.uid,
                    },
                }
            },
        )
        paths[account] = pki.write_kubeconfig(
            into / f"{account}.kubeconfig",
            cluster.server,
            cluster.pki_dir / "ca.crt",
            user=f"system:serviceaccount:{NAMESPACE}:{account}",
            token=request.status.token,
        )
    return paths


def _statefulset(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, **ON}},
                "spec": {
                    "containers": [{"name": "app", "image": "example.invalid/a", "command": ["/a"]}]
                },
            },
        },
    }


def _deployment(name: str) -> dict[str, Any]:
    spec = _statefulset(name)["spec"]
    del spec["serviceName"]
    return {"metadata": {"name": name}, "spec": spec}


def _works(kube: Kube, namespace: str, suffix: str) -> None:
    """The controller creates a StatefulSet's claim; the webhook admits a Deployment's pod
    (which needs a LIST of slot holders through its own API client)."""
    kube.apps.create_namespaced_stateful_set(namespace, _statefulset(f"db{suffix}"))
    eventually(lambda: kube.pvc(namespace, f"podckpt-statefulset-db{suffix}-0"), what="PVC")
    kube.apps.create_namespaced_deployment(namespace, _deployment(f"web{suffix}"))
    pods = eventually(lambda: kube.pods(namespace, f"app=web{suffix}"), what="Deployment pod")
    assert pods[0]["metadata"]["name"] == f"web{suffix}-slot-0"


def test_the_operator_logs_in_again_when_its_token_is_revoked(
    kube: Kube,
    namespace: str,
    operator: Operator,
    apiserver_cluster: Any,
    tmp_path: Path,
) -> None:
    first = f"podckpt-token-{uuid.uuid4().hex[:6]}"
    second = f"podckpt-token-{uuid.uuid4().hex[:6]}"
    operator.kubeconfigs = _bound_kubeconfigs(kube, apiserver_cluster, first, tmp_path)
    operator.stop_webhook()
    operator.stop_controller()
    try:
        operator.start_webhook()
        operator.start_controller()
        _works(kube, namespace, "a")

        # Rotation: the old tokens are refused from now on; new ones are where the
        # processes read their credentials.
        old = []
        for account, path in operator.kubeconfigs.items():
            old.append(tmp_path / f"old-{account}.kubeconfig")
            old[-1].write_text(path.read_text())
        _bound_kubeconfigs(kube, apiserver_cluster, second, tmp_path)
        kube.core.delete_namespaced_secret(first, NAMESPACE)
        eventually(
            lambda: all(_refused(apiserver_cluster, path) for path in old),
            what="the old tokens refused",
        )
        _works(kube, namespace, "b")
        logs = "".join((operator.logs / f"{p}.log").read_text() for p in ("webhook", "controller"))
        assert "re-login (401 Unauthorized): new credentials" in logs
    finally:
        # Later tests run the operator with ordinary tokens again.
        operator.kubeconfigs = {}
        operator.stop_webhook()
        operator.stop_controller()
        operator.start_webhook()
        operator.start_controller()
        for name in (first, second):
            with contextlib.suppress(client.ApiException):
                kube.core.delete_namespaced_secret(name, NAMESPACE)
