"""The workload revision a pod belongs to (a checkpoint is restored only into the same)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from podckpt.operator.domain.revision import revision

APP: dict[str, Any] = {
    "name": "app",
    "image": "reg/app:1",
    "command": ["/app"],
    "env": [{"name": "VERSION", "value": "v1"}],
    "volumeMounts": [
        {"name": "conf", "mountPath": "/etc/app"},
        {"name": "kube-api-access-x7k2q", "mountPath": "/var/run/secrets/kubernetes.io/sa"},
    ],
    "resources": {"limits": {"memory": "1Gi"}},
}


def _pod(container: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"labels": labels or {}},
        "spec": {
            "containers": [container],
            "volumes": [
                {"name": "conf", "configMap": {"name": "app-v1"}},
                {"name": "kube-api-access-x7k2q", "projected": {"sources": []}},
            ],
        },
    }


def test_the_controllers_template_hash_is_the_revision() -> None:
    assert revision(_pod(APP, {"pod-template-hash": "5d4f8c"}), APP) == "pod-template-hash=5d4f8c"
    statefulset = {"controller-revision-hash": "db-7f9c", "app": "db"}
    assert revision(_pod(APP, statefulset), APP) == "controller-revision-hash=db-7f9c"


def test_without_one_the_containers_spec_is_the_revision() -> None:
    base = revision(_pod(APP), APP)
    assert base.startswith("spec=sha256:")
    # the same spec submitted again (a plain pod applied again) is the same revision, even
    # with another generated service account volume and podckpt's own variables
    again = copy.deepcopy(APP)
    again["volumeMounts"][1]["name"] = "kube-api-access-b9zz1"
    again["env"].append({"name": "PODCKPT_IMAGE", "value": "reg/app:1"})
    pod = _pod(again)
    pod["spec"]["volumes"][1]["name"] = "kube-api-access-b9zz1"
    assert revision(pod, again) == base


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("image", lambda c, p: c.update(image="reg/app:2")),
        ("args", lambda c, p: c.update(args=["--fast"])),
        ("env", lambda c, p: c["env"].__setitem__(0, {"name": "VERSION", "value": "v2"})),
        ("env source", lambda c, p: c.update(envFrom=[{"configMapRef": {"name": "x"}}])),
        ("mount", lambda c, p: c["volumeMounts"][0].update(mountPath="/etc/other")),
        ("volume source", lambda c, p: p["spec"]["volumes"][0].update(configMap={"name": "v2"})),
        ("resources", lambda c, p: c["resources"]["limits"].update(memory="2Gi")),
    ],
)
def test_a_changed_spec_is_another_revision(what: str, change: Any) -> None:
    container = copy.deepcopy(APP)
    pod = _pod(container)
    before = revision(pod, container)
    change(container, pod)
    assert revision(pod, container) != before, what
