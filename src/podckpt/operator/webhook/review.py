"""The AdmissionReview payloads (admission.k8s.io/v1) the webhook reads and writes, and the
JSON patch between the original and the rewritten pod.

The patch is a structural diff: objects are compared key by key, and a list that differs is
replaced as a whole. Replacing whole lists is what keeps a diff-based patch safe (no index
shifting, no `add` into a missing array, the trap of hand-written patches), and it costs a
tenth of `jsonpatch.make_patch` on a pod, which matters at the admission latency target
(docs/benchmarks.md, "Operator").
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict


class GroupVersionKind(TypedDict):
    group: str
    version: str
    kind: str


class UserInfo(TypedDict, total=False):
    username: str
    uid: str
    groups: list[str]


class AdmissionRequest(TypedDict):
    uid: str
    kind: GroupVersionKind
    operation: str
    namespace: NotRequired[str]
    name: NotRequired[str]
    object: NotRequired[dict[str, Any]]
    dryRun: NotRequired[bool]
    userInfo: NotRequired[UserInfo]


class AdmissionReview(TypedDict):
    apiVersion: str
    kind: str
    request: AdmissionRequest


class Status(TypedDict):
    code: int
    message: str


class AdmissionResponse(TypedDict):
    uid: str
    allowed: bool
    warnings: NotRequired[list[str]]
    patch: NotRequired[str]
    patchType: NotRequired[str]
    status: NotRequired[Status]


class AdmissionReviewResponse(TypedDict):
    apiVersion: str
    kind: str
    response: AdmissionResponse


def respond(
    uid: str,
    *,
    patch: list[dict[str, Any]] | None = None,
    warnings: list[str] | None = None,
    denied: Status | None = None,
) -> AdmissionReviewResponse:
    response = AdmissionResponse(uid=uid, allowed=denied is None)
    if warnings:
        response["warnings"] = warnings
    if denied is not None:
        response["status"] = denied
    elif patch:
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        response["patchType"] = "JSONPatch"
    return AdmissionReviewResponse(
        apiVersion="admission.k8s.io/v1", kind="AdmissionReview", response=response
    )


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def diff(original: Mapping[str, Any], mutated: Mapping[str, Any]) -> list[dict[str, Any]]:
    """JSON patch operations that turn `original` into `mutated`."""
    ops: list[dict[str, Any]] = []
    _diff_objects(original, mutated, "", ops)
    return ops


def _diff_objects(
    old: Mapping[str, Any], new: Mapping[str, Any], path: str, ops: list[dict[str, Any]]
) -> None:
    for key in old:
        if key not in new:
            ops.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
    for key, new_value in new.items():
        where = f"{path}/{_escape(key)}"
        if key not in old:
            ops.append({"op": "add", "path": where, "value": new_value})
            continue
        old_value = old[key]
        if old_value == new_value:
            continue
        if isinstance(old_value, Mapping) and isinstance(new_value, Mapping):
            _diff_objects(old_value, new_value, where, ops)
        else:
            ops.append({"op": "replace", "path": where, "value": new_value})
