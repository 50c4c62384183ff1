"""AdmissionReview in and out, and the diff patch, without a cluster."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import jsonpatch
import pytest

from podckpt.operator.settings import OperatorSettings
from podckpt.operator.webhook.handlers import WebhookState, admit
from podckpt.operator.webhook.imageconfig import ImageConfigResolver
from podckpt.operator.webhook.pullsecrets import PullSecrets
from podckpt.operator.webhook.review import AdmissionReview, diff
from podckpt.operator.webhook.slots import SlotBook


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"a": 1}, {"a": 2}),
        ({"a": 1, "b": 2}, {"a": 1}),
        ({}, {"x": {"y": [1, 2]}}),
        ({"l": [1, 2, 3]}, {"l": [3]}),
        ({"m": {"a/b": 1, "c~d": 2}}, {"m": {"a/b": 3}}),
        ({"n": {"deep": {"er": 1}}}, {"n": {"deep": {"er": 1, "new": []}}}),
        ({"t": [1]}, {"t": {"now": "a map"}}),
    ],
)
def test_diff_turns_old_into_new(old: dict[str, Any], new: dict[str, Any]) -> None:
    assert jsonpatch.apply_patch(old, diff(old, new)) == new


def test_equal_documents_need_no_patch() -> None:
    assert diff({"a": [1, {"b": 2}]}, {"a": [1, {"b": 2}]}) == []


def _state() -> WebhookState:
    return WebhookState(
        op=OperatorSettings(),
        resolver=ImageConfigResolver(),
        slots=SlotBook(5),
        secrets=PullSecrets("podckpt-system:podckpt-webhook"),
    )


def _review(pod: dict[str, Any], *, dry_run: bool = False) -> AdmissionReview:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "namespace": "ns",
            "object": pod,
            "dryRun": dry_run,
        },
    }


def test_admit_returns_the_patch_and_warnings(make_pod: Any) -> None:
    pod = make_pod(
        name="solo",
        labels={"memverge.ai/checkpoint-mode": "true"},
        annotations={"memverge.ai/checkpoint-storage-volume": "ckpt"},
        volumes=[{"name": "ckpt", "emptyDir": {}}],
    )
    result = asyncio.run(admit(_state(), _review(pod)))
    response = result["response"]
    assert response["uid"] == "u-1"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    assert patched["spec"]["containers"][0]["command"][0] == "/.podckpt/bin/podckpt-agent"
    assert any("Unconfined" in w for w in response.get("warnings", []))


def test_admit_denies_with_status(make_pod: Any) -> None:
    pod = make_pod(name="solo", labels={"memverge.ai/checkpoint-mode": "maybe"})
    response = asyncio.run(admit(_state(), _review(pod)))["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "memverge.ai/checkpoint-mode" in response["status"]["message"]
    assert "patch" not in response


def test_admit_leaves_other_pods_alone(make_pod: Any) -> None:
    response = asyncio.run(admit(_state(), _review(make_pod(name="x"))))["response"]
    assert response == {"uid": "u-1", "allowed": True}


def test_namespace_defaults_come_from_the_watch(make_pod: Any) -> None:
    state = _state()
    state.namespaces["ns"] = ({"memverge.ai/checkpoint-mode": "true"}, {})
    pod = make_pod(name="db-0", owner="statefulset")
    response = asyncio.run(admit(state, _review(pod)))["response"]
    assert "patch" in response
