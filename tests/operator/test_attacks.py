"""Attacks on the operator through the real API server and the real webhook: a forged
AdmissionReview naming another namespace's pull Secret, forged podckpt.io/* keys (on a pod
that skips injection, on an injected pod, on a claim, on a hand-made "injected" pod), and a
namespace whose Pod Security level refuses injected pods."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import ssl
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubehelpers import Kube, eventually
from kubernetes import client

from podckpt.devtools.operator_harness import Operator

pytestmark = pytest.mark.apiserver

ON = {"memverge.ai/checkpoint-mode": "true"}
USER, PASSWORD = "robot", "s3cret"


class PrivateRegistry:
    """A registry that needs a login for its one image `private/app:1` (ENTRYPOINT /secret),
    and remembers every Authorization header it was sent."""

    def __init__(self) -> None:
        config = json.dumps({"config": {"Entrypoint": ["/secret-entrypoint"]}}).encode()
        digest = "sha256:" + hashlib.sha256(config).hexdigest()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"digest": digest, "size": len(config)},
                "layers": [],
            }
        ).encode()
        self.blobs = {
            "/v2/private/app/manifests/1": manifest,
            f"/v2/private/app/blobs/{digest}": config,
        }
        self.seen: list[str | None] = []
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                registry.seen.append(auth)
                body = registry.blobs.get(self.path)
                if auth != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="private"')
                    body = b""
                elif body is None:
                    self.send_response(404)
                    body = b""
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def pull_secret(self, name: str) -> dict[str, Any]:
        auths = {self.host: {"username": USER, "password": PASSWORD}}
        data = base64.b64encode(json.dumps({"auths": auths}).encode()).decode()
        return {
            "metadata": {"name": name},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": data},
        }

    def logins(self) -> int:
        return sum(1 for a in self.seen if a)


@pytest.fixture
def private_registry() -> Iterator[PrivateRegistry]:
    registry = PrivateRegistry()
    registry.thread.start()
    try:
        yield registry
    finally:
        registry.server.shutdown()
        registry.server.server_close()


@pytest.fixture
def other_namespace(kube: Kube) -> Iterator[str]:
    name = f"victim-{uuid.uuid4().hex[:6]}"
    kube.core.create_namespace({"metadata": {"name": name}})
    yield name
    with contextlib.suppress(client.ApiException):
        kube.core.delete_namespace(name)


def _private_pod(name: str, registry: PrivateRegistry, secret: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": ON,
            "annotations": {"memverge.ai/checkpoint-storage-volume": "ckpt"},
        },
        "spec": {
            "imagePullSecrets": [{"name": secret}],
            "containers": [{"name": "app", "image": f"{registry.host}/private/app:1"}],
            "volumes": [{"name": "ckpt", "emptyDir": {}}],
        },
    }


def _forge(operator: Operator, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    """POST an AdmissionReview to the webhook directly, as any pod that reaches it could."""
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": namespace,
            "object": {**pod, "metadata": {**pod["metadata"], "namespace": namespace}},
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        },
    }
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the attacker needs no trust in the webhook
    request = urllib.request.Request(
        f"https://127.0.0.1:{operator.port}/inject",
        data=json.dumps(review).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, context=context, timeout=20) as response:
        answer: dict[str, Any] = json.loads(response.read())["response"]
    return answer


def test_a_forged_review_cannot_use_another_namespaces_pull_secret(
    kube: Kube,
    operator: Operator,
    namespace: str,
    other_namespace: str,
    private_registry: PrivateRegistry,
) -> None:
    kube.core.create_namespaced_secret(other_namespace, private_registry.pull_secret("regcred"))
    answer = _forge(operator, other_namespace, _private_pod("x", private_registry, "regcred"))
    assert answer["allowed"] is False
    message = answer["status"]["message"]
    assert f"may not read imagePullSecret regcred in namespace {other_namespace}" in message
    assert "create rolebinding podckpt-pull-secrets" in message
    assert private_registry.logins() == 0, "the victim's credentials reached the registry"
    assert "patch" not in answer

    # A namespace that grants it: its own pods get their ENTRYPOINT from the private registry.
    kube.core.create_namespaced_secret(namespace, private_registry.pull_secret("mine"))
    client.RbacAuthorizationV1Api(kube.api).create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "podckpt-pull-secrets"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "podckpt-webhook-pull-secrets",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": "podckpt-webhook", "namespace": "podckpt-system"}
            ],
        },
    )

    def admitted() -> dict[str, Any] | None:
        try:
            return kube.create_pod(namespace, _private_pod("granted", private_registry, "mine"))
        except client.ApiException:
            return None  # the RoleBinding takes a moment to reach the authorizer's cache

    created = eventually(admitted, what="admission with the granted pull secret")
    assert created["spec"]["containers"][0]["args"] == ["/secret-entrypoint"]
    assert private_registry.logins() > 0


def test_baseline_namespace_gets_one_clear_denial(kube: Kube, namespace: str) -> None:
    kube.core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "baseline"}}}
    )
    pod = {
        "metadata": {"name": "p", "labels": ON},
        "spec": {"containers": [{"name": "app", "image": "example.invalid/a", "command": ["/a"]}]},
    }
    pod["metadata"]["annotations"] = {"memverge.ai/checkpoint-storage-volume": "ckpt"}
    pod["spec"]["volumes"] = [{"name": "ckpt", "emptyDir": {}}]
    message = eventually(lambda: _denied_by_us(kube, namespace, pod), what="podckpt's denial")
    assert "enforces the Pod Security level 'baseline'" in message
    assert f"kubectl label namespace {namespace} --overwrite" in message
    assert "pod-security.kubernetes.io/enforce=privileged" in message
    assert "violates PodSecurity" not in message, "podckpt's answer, not the later plugin's"


def _denied_by_us(kube: Kube, namespace: str, pod: dict[str, Any]) -> str | None:
    message = kube.denial(namespace, pod)
    return message if "podckpt" in message else None  # the namespace watch may lag a moment


def _forged_pod(name: str, claim: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod that claims to be injected (so the webhook leaves it alone) and names a claim."""
    return {
        "metadata": {
            "name": name,
            "labels": labels or {},
            "annotations": {
                "podckpt.io/injected": "v1",
                "podckpt.io/identity": "statefulset/db#0",
                "podckpt.io/claim": claim,
                "podckpt.io/containers": "app",
            },
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "StatefulSet",
                    "name": "db",
                    "uid": str(uuid.uuid4()),
                    "controller": True,
                }
            ],
        },
        "spec": {
            "initContainers": [
                {"name": "podckpt-bundle", "image": "example.invalid/b", "command": ["/b"]}
            ],
            "containers": [{"name": "app", "image": "example.invalid/a", "command": ["/a"]}],
            "volumes": [{"name": "podckpt-store", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }


def test_forged_podckpt_keys_are_refused(kube: Kube, namespace: str) -> None:
    # A pod that no podckpt webhook sees: the policy refuses it, naming the keys.
    message = kube.denial(namespace, _forged_pod("sneaky", "expensive-ssd-1000gi"))
    assert "podckpt-reserved-keys" in message
    assert "set by podckpt's webhook only" in message
    assert "annotation podckpt.io/claim=expensive-ssd-1000gi" in message
    # An opted-in pod with our keys but not injected: the webhook refuses it.
    pod = {
        "metadata": {
            "name": "halfway",
            "labels": ON,
            "annotations": {
                "podckpt.io/claim": "expensive-ssd-1000gi",
                "memverge.ai/checkpoint-storage-volume": "ckpt",
            },
        },
        "spec": {
            "containers": [{"name": "app", "image": "example.invalid/a", "command": ["/a"]}],
            "volumes": [{"name": "ckpt", "emptyDir": {}}],
        },
    }
    assert "set by podckpt only; remove them" in kube.denial(namespace, pod)
    # A claim labelled as podckpt's, made by someone else than the controller.
    with pytest.raises(client.ApiException) as info:
        kube.core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": {"name": "podckpt-statefulset-db-0", "labels": {"podckpt.io/x": "y"}},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )
    assert "set by the podckpt controller only" in json.loads(info.value.body)["message"]


def test_keys_of_an_injected_pod_cannot_be_changed(kube: Kube, namespace: str) -> None:
    created = kube.create_pod(
        namespace,
        {
            "metadata": {
                "name": "real",
                "labels": ON,
                "annotations": {"memverge.ai/checkpoint-storage-volume": "ckpt"},
            },
            "spec": {
                "containers": [{"name": "app", "image": "example.invalid/a", "command": ["/a"]}],
                "volumes": [{"name": "ckpt", "emptyDir": {}}],
            },
        },
    )
    assert created["metadata"]["annotations"]["podckpt.io/injected"] == "v1"
    with pytest.raises(client.ApiException) as info:
        kube.core.patch_namespaced_pod(
            "real", namespace, {"metadata": {"annotations": {"podckpt.io/claim": "other"}}}
        )
    message = json.loads(info.value.body)["message"]
    assert "cannot be changed; refused: annotation podckpt.io/claim=other" in message
    # Other labels and annotations stay the user's.
    kube.core.patch_namespaced_pod("real", namespace, {"metadata": {"labels": {"team": "a"}}})
    # The one key a user writes: `kubectl podckpt checkpoint` asks the controller to record an
    # on-demand checkpoint (it only makes the controller read the agent's log again).
    requested = {"podckpt.io/checkpoint-requested": "2026-12-01T00:00:00Z"}
    patched = kube.core.patch_namespaced_pod(
        "real", namespace, {"metadata": {"annotations": requested}}
    )
    assert (
        patched.metadata.annotations["podckpt.io/checkpoint-requested"]
        == requested["podckpt.io/checkpoint-requested"]
    )
    with pytest.raises(client.ApiException) as info:
        kube.core.patch_namespaced_pod(
            "real", namespace, {"metadata": {"annotations": {"podckpt.io/checkpoint-x": "1"}}}
        )
    assert "refused: annotation podckpt.io/checkpoint-x=1" in json.loads(info.value.body)["message"]


def test_the_controller_never_takes_a_volume_name_from_a_pod(
    kube: Kube, namespace: str, operator: Operator
) -> None:
    # Opted in, so the policy lets it through, and "already injected", so the webhook leaves
    # it alone: only the controller stands between it and a PVC of the name it asks for.
    del operator
    kube.create_pod(namespace, _forged_pod("db-0", "data-postgres-0", labels=ON))
    eventually(lambda: "ClaimRefused" in kube.reasons(namespace, "db-0"), what="ClaimRefused event")
    (event,) = [e for e in kube.events(namespace, "db-0") if e["reason"] == "ClaimRefused"]
    assert "'data-postgres-0' is not this pod's checkpoint volume" in event["message"]
    assert kube.pvc(namespace, "data-postgres-0") is None
