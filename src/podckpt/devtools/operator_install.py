"""Install the podckpt operator IN the local cluster, from its manifests, as a user would.

`kubectl kustomize config/` renders the shipped manifests; three things are set on them for
this cluster, as a kustomize overlay of an installation would:

- the operator image: built without Docker (`operator_image`) and loaded into the node's
  containerd (no registry), `imagePullPolicy: IfNotPresent`;
- the bundle image (`PODCKPT_BUNDLE_IMAGE`): the agent bundle built from the current sources
  (`podckpt.bundle`), loaded the same way;
- the API server address: the local cluster has no kube-proxy, so the `kubernetes` Service's
  ClusterIP leads nowhere. The pods reach the API server through the node tier's forwarder
  (`podckpt.devtools.cluster.forward`) at ``<node IP>:443``, under the name
  ``kubernetes.default.svc`` (in the serving certificate) mapped by ``hostAliases``.

Everything else - namespace, RBAC, Deployments, Service, PDB, MutatingWebhookConfiguration and
the webhook's certificate bootstrap - is exactly what ships. Used by tests/e2e, the benchmark
`bench/e2e_restore.py` and `hack/demo.sh`.

    python -m podckpt.devtools.operator_install [--uninstall]   # on the cluster of hack/cluster.sh
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import yaml

from podckpt.bundle import build_bundle
from podckpt.bundle.image import build_image as build_bundle_image
from podckpt.devtools.cluster.__main__ import _state_dir
from podckpt.devtools.cluster.cluster import Cluster
from podckpt.devtools.operator_harness import (
    DEFAULT_PREFIX,
    WEBHOOK_CONFIGURATION,
    ca_bundle_set,
    with_key_prefix,
)
from podckpt.devtools.operator_image import build_image as build_operator_image

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "config"
NAMESPACE = "podckpt-system"
DEPLOYMENTS = ("podckpt-webhook", "podckpt-controller")
API_HOSTNAME = "kubernetes.default.svc"


class NodeClusterLike(Protocol):
    """What the installer needs from `podckpt.devtools.cluster.Cluster` (node tier)."""

    @property
    def state(self) -> Any: ...

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]: ...

    def load_image(self, source: Path, ref: str, *, push: bool = True) -> str: ...


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


def build_images(cluster: NodeClusterLike, work: Path) -> tuple[str, str]:
    """(operator ref, bundle ref), both loaded into the node's containerd."""
    operator_ref = build_operator_image(work / "operator-oci", _sources_tag())
    cluster.load_image(work / "operator-oci", operator_ref, push=False)
    bundle_ref = build_bundle_image(build_bundle(), work / "bundle-oci")
    cluster.load_image(work / "bundle-oci", bundle_ref, push=False)
    return operator_ref, bundle_ref


def render(cluster: NodeClusterLike, operator_ref: str, bundle_ref: str) -> list[dict[str, Any]]:
    """The shipped manifests (kustomize), set for the local cluster (see the module doc)."""
    node_ip = cluster.state.node_ip
    out = cluster.kubectl("kustomize", str(CONFIG)).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        spec = doc["spec"]["template"]["spec"]
        spec["hostAliases"] = [{"ip": node_ip, "hostnames": [API_HOSTNAME]}]
        for container in spec["containers"]:
            container["image"] = operator_ref
            container["imagePullPolicy"] = "IfNotPresent"
            env = [e for e in container.get("env", []) if e["name"] != "PODCKPT_BUNDLE_IMAGE"]
            env += [
                {"name": "KUBERNETES_SERVICE_HOST", "value": API_HOSTNAME},
                {"name": "KUBERNETES_SERVICE_PORT", "value": "443"},
            ]
            if doc["metadata"]["name"] == "podckpt-webhook":
                env.append({"name": "PODCKPT_BUNDLE_IMAGE", "value": bundle_ref})
            container["env"] = env
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


def install(cluster: NodeClusterLike, work: Path | None = None, timeout: float = 240) -> None:
    """Build and load the images, apply the manifests, wait until the operator serves."""
    with tempfile.TemporaryDirectory(prefix="podckpt-operator-install-") as tmp:
        operator_ref, bundle_ref = build_images(cluster, work or Path(tmp))
    docs = render(cluster, operator_ref, bundle_ref)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
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


def uninstall(cluster: NodeClusterLike, *, wait: bool = False) -> None:
    """Remove the in-cluster operator. With `wait`, return only once its namespace (and so
    its webhook and controller pods) is gone, so that another operator can take over."""
    cluster.kubectl(
        "delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "--ignore-not-found"
    )
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
        if out:
            cluster.kubectl("delete", *out, "--ignore-not-found", check=False)


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
    for deployment in deployments:
        cluster.kubectl(
            "rollout", "status", "-n", NAMESPACE, deployment, f"--timeout={int(timeout)}s",
            timeout=timeout + 10,
        )  # fmt: skip
    _wait_available(cluster, timeout)


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
    args = parser.parse_args(argv)
    cluster = Cluster(_state_dir())
    if not cluster.running("node"):
        print("operator_install: no node-tier cluster runs (hack/cluster.sh up)", file=sys.stderr)
        return 1
    if args.uninstall:
        uninstall(cluster)
    else:
        install(cluster)
    return 0


if __name__ == "__main__":
    sys.exit(main())
