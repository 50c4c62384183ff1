"""Admission with two webhook replicas and a lagging namespace watch: what the API server
returns *between* two reads of one admission (found by the operator fault suite,
tests/operator/faults). The API is a stand-in answering the webhook's reads from a list of pods
and namespaces that the test changes between calls, so each interleaving is exact."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import jsonpatch

from podckpt.operator.kube.api import ApiError
from podckpt.operator.settings import OperatorSettings
from podckpt.operator.webhook.handlers import WebhookState, admit
from podckpt.operator.webhook.imageconfig import ImageConfigResolver
from podckpt.operator.webhook.pullsecrets import PullSecrets
from podckpt.operator.webhook.slots import SlotBook

ON = {"memverge.ai/checkpoint-mode": "true"}
GROUP = "podckpt.io/slot-group"
SLOT = "podckpt.io/slot"


class FakeAPI:
    """Answers LISTs of pods (by label or by name) and of namespaces (by name); `before_name`
    runs before a LIST by name is answered: another replica's pod lands in between."""

    def __init__(self) -> None:
        self.pods: list[dict[str, Any]] = []
        self.namespaces: dict[str, dict[str, str]] = {}
        self.before_name: Callable[[], None] = lambda: None
        self.calls: list[str] = []

    async def get(self, path: str, **params: str) -> dict[str, Any]:
        self.calls.append(path)
        if path == "/api/v1/namespaces":
            name = params.get("fieldSelector", "").removeprefix("metadata.name=")
            found = [
                {"metadata": {"name": n, "labels": labels}}
                for n, labels in self.namespaces.items()
                if not name or n == name
            ]
            return {"items": found}
        if "/persistentvolumeclaims/" in path:  # no checkpoint volume yet: the pod is gated
            raise ApiError(404, "NotFound", path)
        assert path.endswith("/pods"), path
        if "fieldSelector" in params:
            self.before_name()
            name = unquote(params["fieldSelector"]).removeprefix("metadata.name=")
            return {"items": [p for p in self.pods if p["metadata"]["name"] == name]}
        key, _, value = params["labelSelector"].partition("=")
        return {"items": [p for p in self.pods if p["metadata"]["labels"].get(key) == value]}


def _state(api: FakeAPI) -> WebhookState:
    state = WebhookState(
        op=OperatorSettings(),
        resolver=ImageConfigResolver(),
        slots=SlotBook(5),
        secrets=PullSecrets("podckpt-system:podckpt-webhook"),
    )
    state.api = api  # type: ignore[assignment]
    return state


def _review(pod: dict[str, Any], uid: str = "u-1") -> Any:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "namespace": "ns",
            "object": pod,
        },
    }


def _admitted(state: WebhookState, pod: dict[str, Any]) -> dict[str, Any]:
    response = asyncio.run(admit(state, _review(pod)))["response"]
    assert response["allowed"], response
    if "patch" not in response:
        return pod
    patched: dict[str, Any] = jsonpatch.apply_patch(
        pod, json.loads(base64.b64decode(response["patch"]))
    )
    return patched


def _replica(make_pod: Any, labels: dict[str, str] | None = None) -> dict[str, Any]:
    labels = {**(labels or ON), "pod-template-hash": "5d4f8"}
    pod: dict[str, Any] = make_pod(name=None, labels=labels, owner="replicaset")
    return pod


def test_a_pod_another_replica_created_meanwhile_holds_its_slot(make_pod: Any) -> None:
    """Replica A listed the group (empty) and chose slot 0; before its name check, replica B's
    pod `web-slot-0` was stored. That pod holds slot 0: A must not put a second pod into slot 0
    under the next name, it must take slot 1 (the first choice's reservation sees to it)."""
    api = FakeAPI()
    other = _admitted(_state(FakeAPI()), _replica(make_pod))  # replica B's pod, slot 0
    assert other["metadata"]["name"] == "web-slot-0"

    def land() -> None:
        if other not in api.pods:
            api.pods.append(other)

    api.before_name = land
    mine = _admitted(_state(api), _replica(make_pod))
    assert mine["metadata"]["labels"][SLOT] != other["metadata"]["labels"][SLOT], (
        f"two live pods in slot {other['metadata']['labels'][SLOT]}:"
        f" {other['metadata']['name']} and {mine['metadata']['name']}"
    )
    assert mine["metadata"]["name"] == "web-slot-1"


def test_a_pod_stored_meanwhile_holds_its_slot_even_when_our_reservation_is_gone(
    make_pod: Any,
) -> None:
    """As above, and meanwhile a concurrent admission of this process (its LIST fresher than
    ours) saw that pod and dropped our reservation of slot 0. The pod found by name must count
    as slot 0's holder: before, it counted as a squatter and slot 0 was handed out again under
    `web-slot-0-1` (the operator fault suite saw `-slot-6` and `-slot-6-1` side by side)."""
    api = FakeAPI()
    state = _state(api)
    other = _admitted(_state(FakeAPI()), _replica(make_pod))
    assert other["metadata"]["name"] == "web-slot-0"

    def land() -> None:
        if other not in api.pods:
            api.pods.append(other)
            state.slots._reserved.clear()  # what the fresher concurrent admission does

    api.before_name = land
    mine = _admitted(state, _replica(make_pod))
    assert mine["metadata"]["name"] == "web-slot-1"
    assert mine["metadata"]["labels"][SLOT] != other["metadata"]["labels"][SLOT]


def test_a_pod_without_slot_labels_squatting_the_name_is_skipped(make_pod: Any) -> None:
    api = FakeAPI()
    api.pods.append({"metadata": {"name": "web-slot-0", "labels": {}}, "status": {}})
    mine = _admitted(_state(api), _replica(make_pod))
    assert mine["metadata"]["name"] == "web-slot-1"


def test_a_namespace_the_watch_has_not_delivered_yet_is_read(make_pod: Any) -> None:
    """The API server sent the pod because its namespace asks for checkpointing (a namespace
    created, or labelled, a moment ago); the webhook's watch has not seen that yet. The pod
    must be injected, not admitted as it is."""
    api = FakeAPI()
    api.namespaces["ns"] = dict(ON)
    state = _state(api)
    pod = make_pod(name="db-0", owner="statefulset")
    mine = _admitted(state, pod)
    assert "podckpt.io/injected" in mine["metadata"].get("annotations", {})
    # and a namespace the watch knows with stale labels (the label was just added)
    state.namespaces["ns"] = ({}, {})
    mine = _admitted(state, make_pod(name="db-1", owner="statefulset"))
    assert "podckpt.io/injected" in mine["metadata"].get("annotations", {})


def test_an_opted_out_pod_costs_no_namespace_read(make_pod: Any) -> None:
    api = FakeAPI()
    state = _state(api)
    state.namespaces["ns"] = ({}, {})
    pod = make_pod(name="x", labels={"memverge.ai/checkpoint-mode": "false"})
    assert _admitted(state, pod) == pod
    assert api.calls == []
