"""Operating podckpt on a real node: `kubectl podckpt` (run by kubectl as a plugin) checkpoints
a running pod without stopping it, `status` shows the checkpoints the controller recorded on
the PVC, `explain` says what the webhook did; the operator's /metrics carry the real
checkpoint, restore and admission after them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from e2ehelpers import COUNTER, P, apply, container, counted, counts, logs, running_pod, wait_for

from podckpt.devtools.cluster.cluster import Cluster
from podckpt.devtools.operator_install import NAMESPACE

pytestmark = [pytest.mark.node, pytest.mark.slow]

_SAMPLE = re.compile(r"^(\w+)(\{[^}]*\})? (\S+)$")


def plugin(cluster: Cluster, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl podckpt ARGS -n NAMESPACE`, found by kubectl on PATH as users install it."""
    kubectl = str(cluster.bin_dir / "kubectl")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBECONFIG": str(cluster.kubeconfig),
        "PODCKPT_KUBECTL": kubectl,
    }
    return subprocess.run(
        [kubectl, "podckpt", *args, "-n", namespace],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def plugin_json(cluster: Cluster, namespace: str, *args: str) -> dict[str, Any]:
    out = plugin(cluster, namespace, *args, "-o", "json")
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def scrape(cluster: Cluster, component: str) -> dict[tuple[str, str], float]:
    """Samples of every pod of a component, summed: {(name, labels): value}."""
    found = cluster.kubectl(
        "get",
        "pods",
        "-n",
        NAMESPACE,
        "-l",
        f"app.kubernetes.io/name=podckpt-{component}",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ).stdout.split()
    samples: dict[tuple[str, str], float] = {}
    for pod in found:
        raw = f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}:8080/proxy/metrics"
        text = cluster.kubectl("get", "--raw", raw).stdout
        for line in text.splitlines():
            m = _SAMPLE.match(line)
            if m and not line.startswith("#"):
                key = (m[1], m[2] or "")
                samples[key] = samples.get(key, 0.0) + float(m[3])
    return samples


def metric(samples: dict[tuple[str, str], float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for (n, lab), v in samples.items() if n == name and all(w in lab for w in want))


def _entry(doc: dict[str, Any]) -> dict[str, Any]:
    (pod,) = doc["pods"]
    return dict(pod["checkpoints"].get("app") or {})


def test_plugin_checkpoint_status_explain_and_metrics(
    operator: Cluster, namespace: str, app_image: str
) -> None:
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web", f"{P}checkpoint-mode": "true"}},
                "spec": {"containers": [container(app_image)]},
            },
        },
    }
    apply(operator, namespace, sts)
    first, uid = running_pod(operator, namespace, "app=web", set()).split("/")
    counted(operator, namespace, first, 10)

    # checkpoint now: the application runs on in the same container
    out = plugin(operator, namespace, "checkpoint", first)
    assert out.returncode == 0, out.stderr
    generation = re.search(r"checkpoint (\S+) committed", out.stdout)
    assert generation, out.stdout
    at_checkpoint = counts(logs(operator, namespace, first))[-1]
    counted(operator, namespace, first, at_checkpoint + 5)
    assert len(set(re.findall(r"count \d+ (\d+)", logs(operator, namespace, first)))) == 1

    # the controller records it on the PVC (summary annotation), seen by `status`
    def recorded() -> dict[str, Any] | None:
        entry = _entry(plugin_json(operator, namespace, "status", first))
        last = entry.get("last_checkpoint") or {}
        return entry if last.get("generation") == generation[1] else None

    entry = wait_for("the on-demand checkpoint on the PVC", recorded, 60)
    assert entry["last_checkpoint"]["outcome"] == "ok"
    assert entry["last_checkpoint"]["bytes"] > 0
    assert [g["generation"] for g in entry["generations"]] == [generation[1]]

    # delete: checkpointed on SIGTERM, restored by the replacement
    operator.kubectl("delete", "pod", "-n", namespace, first, "--wait=false")
    second, _ = running_pod(operator, namespace, "app=web", {uid}).split("/")
    counted(operator, namespace, second, 1)
    assert counts(logs(operator, namespace, second))[0] > at_checkpoint

    def restored() -> dict[str, Any] | None:
        doc = plugin_json(operator, namespace, "status", "statefulset/web")
        entry = _entry(doc) if len(doc["pods"]) == 1 else {}
        restore = entry.get("last_restore") or {}
        return doc if restore.get("outcome") == "ok" and restore.get("pod") == second else None

    doc = wait_for("status shows the restore", restored, 90)
    assert doc["opted_in"] is True
    (pod,) = doc["pods"]
    assert pod["injected"] is True
    assert pod["identity"] == "statefulset/web#0"
    assert pod["claim"]["name"] == "podckpt-statefulset-web-0"
    assert pod["claim"]["phase"] == "Bound"
    assert pod["not_checkpointable"] == []
    entry = pod["checkpoints"]["app"]
    assert entry["last_checkpoint"]["outcome"] == "ok"
    assert entry["last_checkpoint"]["pod"] == first
    assert entry["last_restore"]["duration_s"] > 0
    text = plugin(operator, namespace, "status", "statefulset/web")
    assert text.returncode == 0
    assert "statefulset/web" in text.stdout
    assert "last restore:    ok" in text.stdout

    # explain: what the webhook did to the pod
    explained = plugin_json(operator, namespace, "explain", second)
    assert explained["webhook_entry"] == "opt-in"
    assert explained["injected"] is True
    (app,) = explained["containers"]
    assert app["checkpointed"] is True
    assert app["argv"] == ["/bin/sh", "-c", COUNTER]
    assert "CHECKPOINT_RESTORE" in app["capabilities_added"]
    assert any(e["reason"] == "Injected" for e in explained["events"])
    human = plugin(operator, namespace, "explain", second).stdout
    assert "injected by the webhook entry opt-in" in human

    # a pod that did not opt in says why it is not checkpointable
    plain = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain"},
        "spec": {"containers": [container(app_image)]},
    }
    apply(operator, namespace, plain)
    reasons = plugin_json(operator, namespace, "status", "plain")["pods"][0]["not_checkpointable"]
    assert reasons
    assert "not opted in" in reasons[0]

    # metrics after a real checkpoint, restore and admissions
    controller = scrape(operator, "controller")
    labels = {"namespace": namespace, "workload_kind": "statefulset"}
    assert metric(controller, "podckpt_checkpoints_total", outcome="ok", **labels) == 2
    assert metric(controller, "podckpt_restores_total", outcome="ok", **labels) == 1
    assert metric(controller, "podckpt_fresh_starts_total", reason="no-checkpoint", **labels) == 1
    assert metric(controller, "podckpt_volumes_provisioned_total", **labels) == 1
    assert metric(controller, "podckpt_dump_duration_seconds_count") >= 2
    assert metric(controller, "podckpt_restore_duration_seconds_count") >= 1
    assert metric(controller, "podckpt_checkpoint_image_bytes_sum") > 0
    assert metric(controller, "podckpt_controller_leader") == 1
    webhook = scrape(operator, "webhook")
    assert metric(webhook, "podckpt_admissions_total", outcome="injected") >= 2
    assert metric(webhook, "podckpt_admission_duration_seconds_count", outcome="injected") >= 2
