"""Webhook down: what the failure policies promise (runs last: it stops the webhook)."""

from __future__ import annotations

from typing import Any

import pytest
from kubehelpers import Kube, eventually
from kubernetes import client

pytestmark = pytest.mark.apiserver


def _pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"memverge.ai/checkpoint-storage-volume": "ckpt"},
        },
        "spec": {
            "containers": [{"name": "app", "image": "example.invalid/a", "command": ["/a"]}],
            "volumes": [{"name": "ckpt", "emptyDir": {}}],
        },
    }


def test_webhook_down(kube: Kube, namespace: str, operator: Any) -> None:
    kube.core.patch_namespace(
        namespace, {"metadata": {"labels": {"memverge.ai/checkpoint-injection": "enabled"}}}
    )
    operator.stop_webhook()
    try:
        # Opted in (failurePolicy Fail): refused rather than silently unprotected.
        message = kube.denial(namespace, _pod("asked", {"memverge.ai/checkpoint-mode": "true"}))
        assert "opt-in.pods.podckpt.io" in message
        # Injection namespace (failurePolicy Ignore): the namespace keeps working.
        created = kube.create_pod(namespace, _pod("other", {}))
        assert created["spec"]["containers"][0]["command"] == ["/a"]
        assert "podckpt.io/injected" not in created["metadata"]["annotations"]
    finally:
        operator.start_webhook()
    # back up: the opted-in pod is admitted (and injected) again
    created = eventually(
        lambda: _try(kube, namespace, _pod("asked", {"memverge.ai/checkpoint-mode": "true"})),
        what="admission after restart",
    )
    assert created["metadata"]["annotations"]["podckpt.io/injected"] == "v1"


def _try(kube: Kube, namespace: str, manifest: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return kube.create_pod(namespace, manifest)
    except client.ApiException:
        return None
