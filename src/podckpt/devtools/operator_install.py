"""Install the podckpt operator IN the local cluster as a user would: images pushed to a
registry, then the Helm chart (or, once per test session, the kustomize tree).

- the images: built without Docker and pushed to the cluster's real registry by the code
  behind `make images REGISTRY=... TAG=...` (`podckpt.devtools.publish`); the node pulls them
  from there;
- Helm: `helm upgrade --install podckpt charts/podckpt` with `image.registry`/`image.tag` set
  to those, plus what this cluster needs;
- kustomize: a copy of config/ whose images.env names the pushed images (the one place
  config/ takes them from), rendered with `kubectl kustomize` and applied;
- what this cluster needs, either way: it has no kube-proxy, so the `kubernetes` Service's
  ClusterIP leads nowhere. The pods reach the API server through the node tier's forwarder
  (`podckpt.devtools.cluster.forward`) at ``<node IP>:443``, under the name
  ``kubernetes.default.svc`` (in the serving certificate) mapped by ``hostAliases``
  (chart values `hostAliases` and `extraEnv`).

Everything else - RBAC, Deployments, Services, PDB, MutatingWebhookConfiguration and the
webhook's certificate bootstrap - is exactly what ships. Used by tests/e2e, the benchmark
`bench/e2e_restore.py` and `hack/demo.sh`.

    python -m podckpt.devtools.operator_install [--kustomize] [--uninstall]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import yaml

from podckpt.devtools import publish
from podckpt.devtools.cluster.__main__ import _state_dir
from podckpt.devtools.cluster.cluster import Cluster
from podckpt.devtools.helm import ensure_helm
from podckpt.devtools.operator_harness import (
    DEFAULT_PREFIX,
    WEBHOOK_CONFIGURATION,
    ca_bundle_set,
    with_key_prefix,
)

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "config"
CHART = REPO / "charts" / "podckpt"
NAMESPACE = "podckpt-system"
RELEASE = "podckpt"
DEPLOYMENTS = ("podckpt-webhook", "podckpt-controller")
CLUSTER_ROLES = (
    "podckpt-webhook",
    "podckpt-webhook-pull-secrets",
    "podckpt-controller",
    "podckpt-uninstall",
)
API_HOSTNAME = "kubernetes.default.svc"


class NodeClusterLike(Protocol):
    """What the installer needs from `podckpt.devtools.cluster.Cluster` (node tier)."""

    @property
    def state(self) -> Any: ...

    @property
    def registry(self) -> str: ...

    @property
    def kubeconfig(self) -> Path: ...

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]: ...


def _sources_tag() -> str:
    """A tag that changes with the operator's sources (so a re-install picks up edits)."""
    h = hashlib.sha256()
    src = REPO / "src" / "podckpt"
    for path in sorted(src.rglob("*.py")):
        if "devtools" in path.parts or "__pycache__" in path.parts:
            continue
        h.update(str(path.relative_to(src)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def build_images(cluster: NodeClusterLike, work: Path) -> publish.Published:
    """`make images REGISTRY=<the cluster's registry> TAG=<sources hash>`."""
    return publish.publish(cluster.registry, _sources_tag(), layouts=work)


def _cluster_values(cluster: NodeClusterLike) -> dict[str, Any]:
    """Chart values this cluster needs (see the module doc)."""
    return {
        "hostAliases": [{"ip": cluster.state.node_ip, "hostnames": [API_HOSTNAME]}],
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": API_HOSTNAME},
            {"name": "KUBERNETES_SERVICE_PORT", "value": "443"},
        ],
    }


def helm(cluster: NodeClusterLike, *args: str, timeout: float = 300) -> str:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    proc = subprocess.run(
        [str(ensure_helm()), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args[:2])}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def install_chart(
    cluster: NodeClusterLike, images: publish.Published, registry: str, tag: str, **values: Any
) -> None:
    """`helm upgrade --install` with the pushed images and this cluster's values."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="podckpt-values-") as file:
        yaml.safe_dump({**_cluster_values(cluster), **values}, file)
        file.flush()
        helm(
            cluster,
            "upgrade",
            "--install",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--set",
            f"image.registry={registry}",
            "--set",
            f"image.tag={tag}",
            "--values",
            file.name,
        )
    del images  # the names follow from registry and tag (asserted by the chart tests)


def render_kustomize(cluster: NodeClusterLike, images: publish.Published) -> list[dict[str, Any]]:
    """config/ with images.env naming the pushed images, rendered; plus this cluster's needs."""
    with tempfile.TemporaryDirectory(prefix="podckpt-config-") as tmp:
        config = Path(tmp) / "config"
        shutil.copytree(CONFIG, config)
        (config / "images.env").write_text(images.images_env())
        out = cluster.kubectl("kustomize", str(config)).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    values = _cluster_values(cluster)
    for doc in docs:
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            spec["hostAliases"] = values["hostAliases"]
            for container in spec["containers"]:
                container["env"] = [*container.get("env", []), *values["extraEnv"]]
    return docs


def _wait_available(cluster: NodeClusterLike, timeout: float) -> None:
    """Both Deployments available; fail at once (with the logs) when a pod restarts."""
    deadline = time.monotonic() + timeout
    while True:
        found = cluster.kubectl("get", "deployments,pods", "-n", NAMESPACE, "-o", "json").stdout
        items = json.loads(found)["items"]
        ready = {
            d["metadata"]["name"]
            for d in items
            if d["kind"] == "Deployment"
            and d.get("status", {}).get("availableReplicas", 0) >= d["spec"]["replicas"]
            and d.get("status", {}).get("updatedReplicas", 0) >= d["spec"]["replicas"]
        }
        if ready >= set(DEPLOYMENTS):
            return
        restarted = [
            p["metadata"]["name"]
            for p in items
            if p["kind"] == "Pod"
            and any(s.get("restartCount", 0) > 2 for s in p["status"].get("containerStatuses", []))
        ]
        if restarted or time.monotonic() > deadline:
            why = f"pods restarted: {restarted}" if restarted else f"not available in {timeout} s"
            raise RuntimeError(f"podckpt operator: {why}\n{logs(cluster)[-4000:]}")
        time.sleep(1)


def install(
    cluster: NodeClusterLike,
    work: Path | None = None,
    timeout: float = 240,
    *,
    kustomize: bool = False,
    **values: Any,
) -> publish.Published:
    """Build and push the images, install (chart, or kustomize), wait until the operator
    serves. `values` are extra chart values."""
    with tempfile.TemporaryDirectory(prefix="podckpt-operator-install-") as tmp:
        images = build_images(cluster, work or Path(tmp))
    present = cluster.kubectl("get", "namespace", NAMESPACE, check=False).returncode == 0
    if present and (kustomize or not helm_installed(cluster)):
        # objects of another install (kustomize, or the apiserver tier's harness), which
        # Helm refuses to adopt: removed first, as a user switching methods would
        uninstall(cluster, wait=True)
    if kustomize:
        cluster.kubectl(
            "apply", "-f", "-", input=yaml.safe_dump_all(render_kustomize(cluster, images))
        )
    else:
        install_chart(cluster, images, cluster.registry, _sources_tag(), **values)
    wait_serving(cluster, timeout)
    return images


def wait_serving(cluster: NodeClusterLike, timeout: float = 240) -> None:
    """Both Deployments available, the caBundle written, the webhook Service's endpoints
    known to the API server."""
    _wait_available(cluster, timeout)
    deadline = time.monotonic() + 60
    while not ca_bundle_set(cluster):
        if time.monotonic() > deadline:
            raise RuntimeError("the webhook did not write its caBundle within 60 s")
        time.sleep(0.5)
    # The Service's endpoints must be known to the API server before the first admission.
    deadline = time.monotonic() + 60
    while not cluster.kubectl(
        "get",
        "endpoints",
        "-n",
        NAMESPACE,
        "podckpt-webhook",
        "-o",
        "jsonpath={.subsets[*].addresses[*].ip}",
        check=False,
    ).stdout.strip():
        if time.monotonic() > deadline:
            raise RuntimeError("the webhook Service has no endpoints after 60 s")
        time.sleep(0.5)


def place(cluster: NodeClusterLike, node: str | None, timeout: float = 240) -> None:
    """Pin the chart-installed operator's pods to `node` (None: any node), as an upgrade of
    the release's values would, and wait until the moved pods serve. (The release's values
    are read and written whole: `--reuse-values` merges a map and cannot drop a key.)"""
    values = json.loads(helm(cluster, "get", "values", RELEASE, "-n", NAMESPACE, "-o", "json"))
    values = values or {}
    for component in ("webhook", "controller"):
        section = values.setdefault(component, {})
        if node is None:
            section.pop("nodeSelector", None)
        else:
            section["nodeSelector"] = {"kubernetes.io/hostname": node}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="podckpt-values-") as file:
        yaml.safe_dump(values, file)
        file.flush()
        helm(cluster, "upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", file.name)
    for component in ("webhook", "controller"):
        cluster.kubectl(
            "rollout",
            "status",
            "--namespace",
            NAMESPACE,
            f"deployment/podckpt-{component}",
            f"--timeout={int(timeout)}s",
            timeout=timeout + 10,
        )
    wait_serving(cluster, timeout)


def helm_installed(cluster: NodeClusterLike) -> bool:
    """Whether a Helm release of podckpt is installed (helm is built on demand, cached)."""
    try:
        return bool(helm(cluster, "list", "-n", NAMESPACE, "-q", "-f", f"^{RELEASE}$").strip())
    except (RuntimeError, OSError):
        return False


def uninstall(cluster: NodeClusterLike, *, wait: bool = False) -> None:
    """Remove the in-cluster operator, whichever way it was installed. With `wait`, return
    only once its namespace (and so its webhook and controller pods) is gone, so that
    another operator can take over."""
    # The webhook configuration first (what the chart's pre-delete hook does): never a
    # fail-closed webhook without pods behind it. The hook itself is tested on its own
    # (tests/e2e/test_operator_lifecycle.py); here the API server may have no node to run it on.
    cluster.kubectl(
        "delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "--ignore-not-found"
    )
    if helm_installed(cluster):
        helm(cluster, "uninstall", RELEASE, "--namespace", NAMESPACE, "--no-hooks")
    cluster.kubectl(
        "delete",
        "namespace",
        NAMESPACE,
        "--ignore-not-found",
        f"--wait={str(wait).lower()}",
        "--timeout=180s",
        timeout=200,
    )
    for kind in ("clusterrolebinding", "clusterrole"):
        out = cluster.kubectl(
            "get", kind, "-l", "app.kubernetes.io/part-of=podckpt", "-o", "name", check=False
        ).stdout.split()
        # by name too: the apiserver tier's harness applies them without the label
        out += [f"{kind}/{name}" for name in CLUSTER_ROLES]
        cluster.kubectl("delete", *sorted(set(out)), "--ignore-not-found", check=False)
    cluster.kubectl(
        "delete",
        f"validatingadmissionpolicybinding/{RESERVED_KEYS_POLICY}",
        f"validatingadmissionpolicy/{RESERVED_KEYS_POLICY}",
        "--ignore-not-found",
        check=False,
    )


def set_key_prefix(cluster: NodeClusterLike, prefix: str, timeout: float = 240) -> None:
    """Switch the installed operator to another key prefix (`PODCKPT_KEY_PREFIX`), as an
    installation with its own domain would be configured: both Deployments get the variable
    (rolled out), the webhook configuration's selectors and conditions the prefix."""
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    deployments = [f"deployment/{name}" for name in DEPLOYMENTS]
    setting = f"PODCKPT_KEY_PREFIX={prefix}" if prefix != DEFAULT_PREFIX else "PODCKPT_KEY_PREFIX-"
    cluster.kubectl("set", "env", "-n", NAMESPACE, *deployments, setting)
    config = json.loads(
        cluster.kubectl(
            "get", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "-o", "json"
        ).stdout
    )
    current = config["metadata"].get("annotations", {}).get(PREFIX_ANNOTATION, DEFAULT_PREFIX)
    config = with_key_prefix(config, current, prefix)
    config["metadata"].setdefault("annotations", {})[PREFIX_ANNOTATION] = prefix
    cluster.kubectl("replace", "-f", "-", input=json.dumps(config))
    # The reserved-keys policy knows which pods the webhook sees by the opt-in key.
    policy = json.loads(
        cluster.kubectl(
            "get", "validatingadmissionpolicy", RESERVED_KEYS_POLICY, "-o", "json"
        ).stdout
    )
    cluster.kubectl(
        "replace", "-f", "-", input=json.dumps(with_key_prefix(policy, current, prefix))
    )
    for deployment in deployments:
        cluster.kubectl(
            "rollout", "status", "-n", NAMESPACE, deployment, f"--timeout={int(timeout)}s",
            timeout=timeout + 10,
        )  # fmt: skip
    _wait_available(cluster, timeout)


#: config/policy/reserved_keys.yaml
RESERVED_KEYS_POLICY = "podckpt-reserved-keys"

#: Where `set_key_prefix` notes the prefix the webhook configuration is set for.
PREFIX_ANNOTATION = "podckpt.io/key-prefix"


def logs(cluster: NodeClusterLike) -> str:
    """The operator's pod logs (both Deployments, every pod), for failure reports."""
    parts = []
    pods = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json", check=False).stdout
    for pod in json.loads(pods or '{"items": []}')["items"]:
        name = pod["metadata"]["name"]
        for previous in ("true", "false"):
            out = cluster.kubectl(
                "logs", "-n", NAMESPACE, name, "--tail=400", f"--previous={previous}", check=False
            )
            parts.append(f"===== {name} (previous={previous})\n{out.stdout}{out.stderr}")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--uninstall", action="store_true")
    parser.add_argument("--kustomize", action="store_true", help="config/ instead of the chart")
    args = parser.parse_args(argv)
    cluster = Cluster(_state_dir())
    if not cluster.running("node"):
        print("operator_install: no node-tier cluster runs (hack/cluster.sh up)", file=sys.stderr)
        return 1
    if args.uninstall:
        uninstall(cluster)
    else:
        install(cluster, kustomize=args.kustomize)
    return 0


if __name__ == "__main__":
    sys.exit(main())
