"""Every key given on the Namespace reaches what acts on it (issue 10): the webhook resolves
pod annotation > pod label > namespace annotation > namespace label, and hands the
namespace's keys to the agent (`--namespace-defaults`); the webhook and the controller act on
theirs. What the agent does with each of its keys is proven with real CRIU in
tests/agent/test_namespace_defaults.py; here, that each arrives, parsed as the agent parses it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubehelpers import Kube, eventually
from test_admission import INJECTED, pod

from podckpt.agent import runner
from podckpt.agent.settings import LiveSettings
from podckpt.api import RestorePolicy, contract, parse_quantity, parse_settings

pytestmark = pytest.mark.apiserver

P = "memverge.ai/"


def _label_namespace(
    kube: Kube, namespace: str, labels: dict[str, str], annotations: dict[str, str]
) -> None:
    kube.core.patch_namespace(
        namespace, {"metadata": {"labels": labels, "annotations": annotations}}
    )


def _agent_settings(container: dict[str, Any]) -> Any:
    """The settings the agent of `container` starts with (no pod label or annotation)."""
    command = [w.replace("$$", "$") for w in container["command"]]  # the kubelet's expansion
    run = contract.run_command_from(
        runner.build_parser().parse_args([*command[1:], *container["args"]])
    )
    assert run.namespace_defaults, command
    labels, annotations = contract.parse_namespace_defaults(run.namespace_defaults)
    return LiveSettings(None, None, labels, annotations).read()


def _created(kube: Kube, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create `manifest` once the webhook's namespace watch knows the namespace's keys."""

    def attempt() -> dict[str, Any] | None:
        created = kube.create_pod(namespace, manifest)
        if INJECTED in (created["metadata"].get("annotations") or {}):
            return created
        kube.core.delete_namespaced_pod(
            manifest["metadata"]["name"], namespace, grace_period_seconds=0
        )
        eventually(lambda: not kube.pods(namespace) or None, what="pod deletion")
        return None

    return eventually(attempt, what="the namespace keys to reach the webhook's watch")


@pytest.mark.parametrize(
    ("key", "value", "field", "expected"),
    [
        ("checkpoint-files", "/tmp/cache,/var/log/app", "files", ("/tmp/cache", "/var/log/app")),
        ("irmap-scan-paths", "/etc/app", "irmap_scan_paths", ("/etc/app",)),
        ("checkpoint-diagnosis", "true", "diagnosis", True),
        ("checkpoint-interval", "10m", "interval", 600.0),
        ("checkpoint-keep", "3", "keep", 3),
        ("restore-policy", "fresh", "restore_policy", RestorePolicy.FRESH),
    ],
)
def test_agent_keys_of_the_namespace_reach_the_agent(
    kube: Kube, namespace: str, key: str, value: str, field: str, expected: object
) -> None:
    # checkpoint-mode itself comes from the namespace's label: the pod carries no key at all
    # but the storage volume every plain pod needs.
    _label_namespace(kube, namespace, {f"{P}checkpoint-mode": "true"}, {f"{P}{key}": value})
    manifest = pod("p", annotations={f"{P}checkpoint-storage-volume": "ckpt"})
    created = _created(kube, namespace, manifest)
    settings = _agent_settings(created["spec"]["containers"][0])
    assert settings.mode is True
    assert getattr(settings, field) == expected


def test_the_pods_own_key_wins_over_the_namespaces(kube: Kube, namespace: str) -> None:
    _label_namespace(
        kube, namespace, {f"{P}checkpoint-mode": "true", f"{P}checkpoint-keep": "5"}, {}
    )
    own = {f"{P}checkpoint-keep": "2"}
    manifest = pod("p", labels=own, annotations={f"{P}checkpoint-storage-volume": "ckpt"})
    created = _created(kube, namespace, manifest)
    assert _agent_settings(created["spec"]["containers"][0]).keep == 5  # the default arrives
    container = created["spec"]["containers"][0]
    run = contract.run_command_from(
        runner.build_parser().parse_args([*container["command"][1:], *container["args"]])
    )
    assert run.namespace_defaults is not None
    labels, annotations = contract.parse_namespace_defaults(run.namespace_defaults)
    # the agent parses the pod's labels file above it: the pod's own value wins
    mine = parse_settings(
        created["metadata"]["labels"],
        {},
        namespace_labels=labels,
        namespace_annotations=annotations,
    )
    assert mine.keep == 2


def test_checkpoint_containers_of_the_namespace(kube: Kube, namespace: str) -> None:
    _label_namespace(
        kube, namespace, {f"{P}checkpoint-mode": "true"}, {f"{P}checkpoint-containers": "worker"}
    )
    containers = [
        {"name": "app", "image": "example.invalid/app:1", "command": ["/app"]},
        {"name": "worker", "image": "example.invalid/app:1", "command": ["/worker"]},
    ]
    manifest = pod(
        "p", annotations={f"{P}checkpoint-storage-volume": "ckpt"}, containers=containers
    )
    created = _created(kube, namespace, manifest)
    wrapped = {
        c["name"] for c in created["spec"]["containers"] if c["command"][0] == contract.AGENT_PATH
    }
    assert wrapped == {"worker"}


def test_checkpoint_storage_volume_of_the_namespace(kube: Kube, namespace: str) -> None:
    _label_namespace(
        kube, namespace, {f"{P}checkpoint-mode": "true"}, {f"{P}checkpoint-storage-volume": "ckpt"}
    )
    created = _created(kube, namespace, pod("p"))  # a plain pod without its own key
    store = next(
        m for m in created["spec"]["containers"][0]["volumeMounts"]
        if m["mountPath"] == contract.STORE_MOUNT
    )  # fmt: skip
    assert store["name"] == "ckpt"


def test_volume_size_and_class_of_the_namespace(kube: Kube, namespace: str) -> None:
    klass = f"ns-class-{namespace}"
    kube.storage.create_storage_class(
        {"metadata": {"name": klass}, "provisioner": "example.invalid/none"}
    )
    try:
        _label_namespace(
            kube,
            namespace,
            {f"{P}checkpoint-mode": "true"},
            {f"{P}checkpoint-volume-size": "3Gi", f"{P}checkpoint-storage-class": klass},
        )
        eventually(
            lambda: (kube.core.read_namespace(namespace).metadata.annotations or {}).get(
                f"{P}checkpoint-storage-class"
            ),
            what="namespace annotations",
        )
        time.sleep(2)  # the controller learns namespace keys from a watch
        kube.apps.create_namespaced_stateful_set(
            namespace,
            {
                "metadata": {"name": "db"},
                "spec": {
                    "replicas": 1,
                    "serviceName": "db",
                    "selector": {"matchLabels": {"app": "db"}},
                    "template": {
                        "metadata": {"labels": {"app": "db"}},
                        "spec": {
                            "containers": [
                                {
                                    "name": "app",
                                    "image": "example.invalid/app:1",
                                    "command": ["/app"],
                                }
                            ]
                        },
                    },
                },
            },
        )
        claim = eventually(lambda: kube.pvc(namespace, "podckpt-statefulset-db-0"), what="PVC")
        size = parse_quantity("storage", claim["spec"]["resources"]["requests"]["storage"])
        assert size == 3 * 2**30
        assert claim["spec"]["storageClassName"] == klass
    finally:
        kube.storage.delete_storage_class(klass)
