"""Users see each fact once, and every mistake (issue 10), against the real API server:
admission warnings for unknown keys (with the nearest known key) and label/annotation
conflicts; `checkpoint-mode` given only as an annotation works; a refused or mistaken pod of
a workload is reported on the workload itself, once; a dry run reports nothing."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubehelpers import Kube, eventually
from kubernetes import client
from test_admission import INJECTED, ON, own_volume, pod, template

pytestmark = pytest.mark.apiserver

P = "memverge.ai/"


def _warnings(cluster: Any, namespace: str, manifest: dict[str, Any]) -> str:
    proc = cluster.kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))
    return str(proc.stderr)


def test_unknown_keys_and_conflicts_are_admission_warnings(
    apiserver_cluster: Any, namespace: str, operator: Any
) -> None:
    manifest = pod(
        "typo",
        labels={**ON, f"{P}checkpoint-keep": "2"},
        annotations=own_volume(**{f"{P}checkpoint-volume-sise": "1Gi", f"{P}checkpoint-keep": "3"}),
    )
    stderr = _warnings(apiserver_cluster, namespace, manifest)
    assert (
        f"{P}checkpoint-volume-sise: unknown key (pod annotation), ignored;"
        f" did you mean {P}checkpoint-volume-size?"
    ) in stderr
    assert f"{P}checkpoint-keep: pod label value '2' is ignored" in stderr


def test_checkpoint_mode_as_an_annotation_only(kube: Kube, namespace: str) -> None:
    created = kube.create_pod(
        namespace, pod("annotated", annotations=own_volume(**{f"{P}checkpoint-mode": "true"}))
    )
    assert created["metadata"]["annotations"][INJECTED] == "v1"
    off = kube.create_pod(
        namespace, pod("annotated-off", annotations=own_volume(**{f"{P}checkpoint-mode": "false"}))
    )
    assert INJECTED not in off["metadata"]["annotations"]


def _workload_events(kube: Kube, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
    items = kube.core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind={kind},involvedObject.name={name}"
    ).items
    return [kube.plain(e) for e in items]


def test_refused_and_mistaken_workload_pods_are_reported_on_the_workload(
    kube: Kube, namespace: str
) -> None:
    bad = template({**ON, "app": "bad"})
    bad["metadata"]["annotations"] = {f"{P}checkpoint-volume-size": "2GG"}
    kube.apps.create_namespaced_stateful_set(
        namespace,
        {
            "metadata": {"name": "bad"},
            "spec": {
                "replicas": 1,
                "serviceName": "bad",
                "selector": {"matchLabels": {"app": "bad"}},
                "template": bad,
            },
        },
    )
    typo = template({**ON, "app": "typo"})
    typo["metadata"]["annotations"] = {f"{P}checkpiont-interval": "10m"}
    kube.apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "typo"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "typo"}}, "template": typo},
        },
    )

    refused = eventually(
        lambda: [
            e
            for e in _workload_events(kube, namespace, "StatefulSet", "bad")
            if e["reason"] == "CheckpointRefused"
        ],
        what="CheckpointRefused on the StatefulSet",
    )
    assert "2GG" in refused[0]["message"]
    assert refused[0]["type"] == "Warning"
    # the mistake of a Deployment's pods is on the Deployment (not only on its ReplicaSet)
    warned = eventually(
        lambda: [
            e
            for e in _workload_events(kube, namespace, "Deployment", "typo")
            if e["reason"] == "CheckpointWarning"
        ],
        what="CheckpointWarning on the Deployment",
    )
    assert f"did you mean {P}checkpoint-interval?" in warned[0]["message"]
    deployment = kube.apps.read_namespaced_deployment("typo", namespace)
    assert warned[0]["involvedObject"]["uid"] == deployment.metadata.uid
    eventually(lambda: len(kube.pods(namespace, "app=typo")) == 2, what="both replicas")
    # the StatefulSet controller retries the refused pod and the two replicas share the
    # mistake: each fact is still one Event
    on_set = _workload_events(kube, namespace, "StatefulSet", "bad")
    assert len([e for e in on_set if e["reason"] == "CheckpointRefused"]) == 1
    on_deployment = _workload_events(kube, namespace, "Deployment", "typo")
    assert len([e for e in on_deployment if e["reason"] == "CheckpointWarning"]) == 1


def test_a_dry_run_reports_nothing(kube: Kube, namespace: str) -> None:
    kube.apps.create_namespaced_stateful_set(
        namespace,
        {
            "metadata": {"name": "quiet"},
            "spec": {
                "replicas": 0,
                "serviceName": "quiet",
                "selector": {"matchLabels": {"app": "quiet"}},
                "template": template({**ON, "app": "quiet"}),
            },
        },
    )
    owner = kube.apps.read_namespaced_stateful_set("quiet", namespace)

    def refused_pod(keep: str) -> dict[str, Any]:
        manifest = pod("quiet-0", labels={**ON, "app": "quiet", f"{P}checkpoint-keep": keep})
        manifest["metadata"]["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "name": "quiet",
                "uid": owner.metadata.uid,
                "controller": True,
            }
        ]
        return manifest

    with pytest.raises(client.ApiException):
        kube.core.create_namespaced_pod(namespace, refused_pod("0"), dry_run="All")
    assert "'999'" in kube.denial(namespace, refused_pod("999"))

    def refusals() -> list[str] | None:
        found = [
            e["message"]
            for e in _workload_events(kube, namespace, "StatefulSet", "quiet")
            if e["reason"] == "CheckpointRefused"
        ]
        return found or None

    # the real refusal is reported; the dry run (posted before it, if at all) is not
    assert [m for m in eventually(refusals, what="the real refusal") if "'0'" in m] == []
