"""The Helm chart: `helm lint`, `helm template` with the values users set, and the same objects
as the kustomize tree in config/ (so either install gives the same operator, and both take the
image names from one place)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from podckpt.devtools.publish import DEFAULT_REGISTRY, IMAGE_NAMES

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "podckpt"


def _run(*argv: object) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def template(helm: Path, *sets: str, namespace: str = "podckpt-system") -> list[dict[str, Any]]:
    args: list[str] = []
    for s in sets:
        args += ["--set", s]
    out = _run(helm, "template", "podckpt", CHART, "--namespace", namespace, *args)
    return [d for d in yaml.safe_load_all(out) if d]


def by_key(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_lint_passes(helm: Path) -> None:
    _run(helm, "lint", "--strict", CHART)


def test_default_images_follow_the_chart_version(helm: Path) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    objs = by_key(template(helm))
    webhook = objs[("Deployment", "podckpt-webhook")]
    version = chart["appVersion"]
    operator = f"{DEFAULT_REGISTRY}/{IMAGE_NAMES['operator']}:{version}"
    assert webhook["spec"]["template"]["spec"]["containers"][0]["image"] == operator
    assert env_of(webhook)["PODCKPT_BUNDLE_IMAGE"] == (
        f"{DEFAULT_REGISTRY}/{IMAGE_NAMES['bundle']}:{version}"
    )
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'version = "{chart["version"]}"' in pyproject
    assert chart["version"] == version


def test_values_reach_the_objects(helm: Path) -> None:
    objs = by_key(
        template(
            helm,
            "image.registry=registry.example:5000/team",
            "image.tag=1.2.3",
            "keyPrefix=example.com",
            "excludedNamespaces={kube-system,batch}",
            "webhook.failurePolicy=Ignore",
            "webhook.replicas=3",
            "controller.replicas=1",
            "webhook.priorityClassName=high",
            "webhook.tolerations[0].operator=Exists",
            "webhook.resources.limits.memory=300Mi",
            "metrics.enabled=false",
            'settings.INSECURE_REGISTRIES=["registry.example:5000"]',
            namespace="ops",
        )
    )
    webhook = objs[("Deployment", "podckpt-webhook")]
    pod = webhook["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example:5000/team/podckpt-operator:1.2.3"
    env = env_of(webhook)
    assert env["PODCKPT_BUNDLE_IMAGE"] == "registry.example:5000/team/podckpt-bundle:1.2.3"
    assert env["PODCKPT_KEY_PREFIX"] == "example.com/"
    assert json.loads(env["PODCKPT_EXCLUDED_NAMESPACES"]) == ["kube-system", "batch"]
    assert env["PODCKPT_METRICS_PORT"] == "0"
    assert env["PODCKPT_INSECURE_REGISTRIES"] == '["registry.example:5000"]'
    assert webhook["spec"]["replicas"] == 3
    assert pod["priorityClassName"] == "high"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["containers"][0]["resources"]["limits"]["memory"] == "300Mi"
    assert "metrics" not in {p["name"] for p in pod["containers"][0]["ports"]}
    controller = objs[("Deployment", "podckpt-controller")]
    assert controller["spec"]["replicas"] == 1
    assert env_of(controller)["PODCKPT_LEADER_ELECTION"] == "false"
    assert ("Service", "podckpt-webhook-metrics") not in objs
    hooks = objs[("MutatingWebhookConfiguration", "podckpt")]["webhooks"]
    assert [h["failurePolicy"] for h in hooks] == ["Ignore"] * 4
    assert "'example.com/checkpoint-mode'" in hooks[1]["matchConditions"][0]["expression"]
    for h in hooks:
        assert h["clientConfig"]["service"]["namespace"] == "ops"
        excluded = h["namespaceSelector"]["matchExpressions"][-1]["values"]
        assert excluded == ["kube-system", "batch", "ops"]
    assert hooks[0]["objectSelector"]["matchExpressions"][0]["key"] == "example.com/checkpoint-mode"
    subjects = objs[("ClusterRoleBinding", "podckpt-webhook")]["subjects"]
    assert subjects[0]["namespace"] == "ops"


def test_one_webhook_replica_has_no_disruption_budget(helm: Path) -> None:
    """A PDB over a single replica would block every drain of its node."""
    assert ("PodDisruptionBudget", "podckpt-webhook") in by_key(template(helm))
    assert ("PodDisruptionBudget", "podckpt-webhook") not in by_key(
        template(helm, "webhook.replicas=1")
    )


def test_existing_tls_secret_is_mounted(helm: Path) -> None:
    objs = by_key(template(helm, "webhook.tls.existingSecret=webhook-cert"))
    webhook = objs[("Deployment", "podckpt-webhook")]
    env = env_of(webhook)
    assert env["PODCKPT_WEBHOOK_CERTFILE"] == "/tls/tls.crt"
    volumes = {v["name"]: v for v in webhook["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "webhook-cert"


@pytest.mark.parametrize("bad", ["webhook.failurePolicy=Sometimes", "image.pullPolicy=Maybe"])
def test_bad_values_are_refused_by_the_schema(helm: Path, bad: str) -> None:
    proc = subprocess.run(
        [str(helm), "template", "p", str(CHART), "--set", bad],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert bad.split("=", maxsplit=1)[0].rsplit(".", maxsplit=1)[-1] in proc.stderr


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """What must agree between the chart and config/: everything but labels and helm's own
    metadata."""
    out = {k: v for k, v in doc.items() if k not in ("metadata", "apiVersion")}
    annotations = dict(doc["metadata"].get("annotations") or {})
    out["annotations"] = annotations
    # kustomize names a namespace on kinds it does not know to be cluster-scoped (the
    # ValidatingAdmissionPolicy and its binding); the API server drops it there.
    if doc["kind"] not in _CLUSTER_SCOPED_UNKNOWN_TO_KUSTOMIZE:
        out["namespace"] = doc["metadata"].get("namespace")
    return out


_CLUSTER_SCOPED_UNKNOWN_TO_KUSTOMIZE = (
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
)


def test_chart_defaults_and_kustomize_install_the_same_objects(helm: Path, kubectl: Path) -> None:
    chart = [
        d for d in template(helm) if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})
    ]
    kustomize = [
        d
        for d in yaml.safe_load_all(_run(kubectl, "kustomize", REPO / "config"))
        if d and d["kind"] != "Namespace"
    ]
    chart_objs, kustomize_objs = by_key(chart), by_key(kustomize)
    assert sorted(chart_objs) == sorted(kustomize_objs)
    for key, doc in chart_objs.items():
        assert _comparable(doc) == _comparable(kustomize_objs[key]), key


def test_grafana_dashboard_queries_only_exported_metrics(helm: Path) -> None:
    from podckpt.operator import metrics  # noqa: PLC0415

    exported = set()
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        kind = getattr(value, "_type", "")
        if name:
            exported.add(f"{name}_total" if kind == "counter" else name)
    dashboard = json.loads((CHART / "dashboards" / "podckpt.json").read_text())
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queried |= set(re.findall(r"\b(podckpt_[a-z_]+?)(?:_bucket)?\b", target["expr"]))
    assert queried
    assert queried <= exported, queried - exported
    objs = by_key(template(helm, "grafanaDashboard.enabled=true"))
    data = objs[("ConfigMap", "podckpt-grafana-dashboard")]["data"]["podckpt.json"]
    assert json.loads(data) == dashboard
