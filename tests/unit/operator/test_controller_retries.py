"""The controller when the API server goes away (found by the operator fault suite,
tests/operator/faults: a restart of the API server while pods were being provisioned left
their PVCs uncreated and the pods gated for good). A connection that breaks is a transient
error like a 503, and a pod whose handling failed on one is handled again until it succeeds:
kopf never calls an event handler again for an event it already delivered."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import kopf
import pytest

from podckpt.operator.controller import common, handlers
from podckpt.operator.controller.common import ControllerState
from podckpt.operator.kube.api import ApiError, KubeAPI
from podckpt.operator.settings import OperatorSettings

ON = {"memverge.ai/checkpoint-mode": "true"}
CLAIM = "podckpt-statefulset-db-0"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_an_unreachable_api_server_is_a_transient_api_error() -> None:
    async def call() -> None:
        info = kopf.ConnectionInfo(server=f"https://127.0.0.1:{_closed_port()}", insecure=True)
        api = KubeAPI(info, timeout=5)
        try:
            await api.get("/api/v1/namespaces/ns/persistentvolumeclaims/x")
        finally:
            await api.close()

    with pytest.raises(ApiError) as raised:
        asyncio.run(call())
    assert raised.value.transient
    assert not raised.value.not_found


class FlakyAPI:
    """The API server as the controller sees it across a restart: every call fails with
    `error` while `down` is set; otherwise PVCs and Secrets are created and remembered."""

    def __init__(self) -> None:
        self.down = True
        self.error: Exception = ApiError(503, "ServiceUnavailable", "apiserver is shutting down")
        self.objects: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}

    def _check(self) -> None:
        if self.down:
            raise self.error

    async def get(self, path: str, **_: str) -> dict[str, Any]:
        self._check()
        if path in self.pods:
            return self.pods[path]
        if path in self.objects:
            return self.objects[path]
        raise ApiError(404, "NotFound", path)

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        name = f"{path}/{body['metadata'].get('name', '')}"
        if name in self.objects:
            raise ApiError(409, "AlreadyExists", name)
        created = {**body, "metadata": {**body["metadata"], "uid": f"uid-{len(self.objects)}"}}
        self.objects[name] = created
        return created

    async def json_patch(self, path: str, patch: list[dict[str, Any]]) -> dict[str, Any]:
        self._check()
        return self.pods[path]


def _pod(make_pod: Any) -> dict[str, Any]:
    # as the webhook injects it: the claim mounted as the store volume (the controller
    # recomputes the claim and checks that, docs/security.md "Reserved keys")
    store = {"name": "podckpt-store", "persistentVolumeClaim": {"claimName": CLAIM}}
    pod: dict[str, Any] = make_pod(name="db-0", labels=ON, owner="statefulset", volumes=[store])
    pod["metadata"]["uid"] = "pod-uid-1"
    pod["metadata"]["annotations"] = {
        "podckpt.io/injected": "v1",
        "podckpt.io/claim": CLAIM,
        "podckpt.io/identity": "statefulset/db#0",
        "podckpt.io/containers": "app",
    }
    return pod


@pytest.mark.parametrize(
    "error",
    [
        ApiError(503, "ServiceUnavailable", "apiserver is shutting down"),
        ApiError(503, "Unreachable", "Server disconnected"),
        # an API server that just restarted denies until its authorizer has synced RBAC
        ApiError(403, "Forbidden", 'persistentvolumeclaims "x" is forbidden: User ...'),
    ],
)
def test_a_pod_whose_handling_failed_transiently_is_handled_again(
    make_pod: Any, error: ApiError, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "RETRY_DELAYS", ())
    api = FlakyAPI()
    api.error = error
    pod = _pod(make_pod)
    api.pods["/api/v1/namespaces/ns/pods/db-0"] = pod
    state = ControllerState(op=OperatorSettings())
    state.api = api  # type: ignore[assignment]

    async def scenario() -> None:
        # the watch delivers the pod while the API server is down: the handler gives up
        await handlers.handle_pod(state, pod, {}, {})
        assert "pod-uid-1" in state.pending
        assert not api.objects
        api.down = False  # the API server is back; no new event comes for this pod
        await handlers.retry_pending_once(state)

    asyncio.run(scenario())
    assert "/api/v1/namespaces/ns/persistentvolumeclaims/podckpt-statefulset-db-0" in api.objects
    assert "/api/v1/namespaces/ns/secrets/podckpt-store-key" in api.objects
    assert not state.pending
