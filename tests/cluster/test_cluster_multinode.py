"""Tests of the two-node cluster: what the multi-node e2e tests stand on.

Each node is its own machine as far as Kubernetes can tell (own kubelet, containerd, node IP,
cgroup root); pods of the two nodes reach each other; a volume of the default StorageClass
written on one node mounts on the other; `kill` is a machine dying (no SIGTERM reaches a
container, the node goes NotReady, its pods are evicted after their toleration), `stop` is
the kubelet's graceful node shutdown (SIGTERM, pods Failed/Terminated), `start` brings a node
back; `hack/cluster.sh load-image` puts a user's OCI archive into every node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podckpt.devtools.cluster import components, host
from podckpt.devtools.cluster.cluster import Cluster

pytestmark = [pytest.mark.multinode]

#: A container that notes its start and any SIGTERM in /mark/log (a host directory).
MARKER = "trap 'echo TERM >> /mark/log; exit 143' TERM; echo started >> /mark/log; "
MARKER += "while true; do sleep 1; done"


@pytest.fixture
def namespace(nodes: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    name = "multi-" + request.node.name.replace("_", "-")[5:36].strip("-").lower()
    yield nodes.create_namespace(name)
    nodes.kubectl("delete", "namespace", name, "--wait=false", check=False)


def pod(name: str, image: str, command: str, **spec: Any) -> dict[str, Any]:
    """A busybox pod running ``command`` (spec fields such as nodeName go in ``spec``)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "c",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", command],
                    **spec.pop("container", {}),
                }
            ],
            **spec,
        },
    }


def marked(path: Path) -> dict[str, Any]:
    """A spec fragment that mounts host directory ``path`` at /mark."""
    return {
        "container": {"volumeMounts": [{"name": "mark", "mountPath": "/mark"}]},
        "volumes": [{"name": "mark", "hostPath": {"path": str(path), "type": "Directory"}}],
    }


def apply(c: Cluster, namespace: str, *docs: dict[str, Any]) -> None:
    c.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({"kind": "List",
              "apiVersion": "v1", "items": list(docs)}))  # fmt: skip


def get(c: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    out = c.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def phase(c: Cluster, namespace: str, name: str) -> str:
    return str(get(c, namespace, "pod", name).get("status", {}).get("phase", ""))


def cli(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """hack/cluster.sh on the session's cluster (another process: the state is reloaded)."""
    env = {**os.environ, "PODCKPT_CLUSTER_DIR": str(c.state_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "podckpt.devtools.cluster", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    c.reload()
    return proc


def test_each_node_has_its_own_ip_runtime_and_cgroups_and_pods_reach_across(
    nodes: Cluster, busybox_image: str, namespace: str
) -> None:
    first, second = nodes.state.nodes
    assert [first.name, second.name] == ["podckpt-node", "podckpt-node-2"]
    assert len({first.ip, second.ip}) == len({first.cgroup_root, second.cgroup_root}) == 2
    assert first.ports["kubelet"] != second.ports["kubelet"]
    for n in (first, second):
        node = json.loads(nodes.kubectl("get", "node", n.name, "-o", "json").stdout)
        addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
        assert addresses["InternalIP"] == n.ip
        assert nodes.node_ready(n.name) == "True"
    page = "echo hello-from-node-2 > /tmp/index.html; httpd -f -p 8080 -h /tmp"
    apply(nodes, namespace, pod("server", busybox_image, page, nodeName=second.name))
    components.wait_until(
        "server Running", lambda: phase(nodes, namespace, "server") == "Running", 60
    )
    server = get(nodes, namespace, "pod", "server")
    assert server["status"]["hostIP"] == second.ip
    url = f"http://{server['status']['podIP']}:8080/index.html"
    fetch = f"for i in 1 2 3 4 5; do wget -q -O - {url} && exit 0; sleep 1; done; exit 1"
    apply(nodes, namespace, pod("client", busybox_image, fetch, nodeName=first.name))
    components.wait_until(
        "client done", lambda: phase(nodes, namespace, "client") in ("Succeeded", "Failed"), 60
    )
    assert nodes.kubectl("logs", "-n", namespace, "client").stdout.strip() == "hello-from-node-2"
    assert get(nodes, namespace, "pod", "client")["status"]["hostIP"] == first.ip
    # The server's processes live under the second node's cgroup root, not the first's.
    cmdlines = [
        Path(f"/proc/{p}/cmdline").read_bytes() for p in host.cgroup_pids(second.cgroup_root)
    ]
    assert any(b"httpd" in c for c in cmdlines)
    assert not any(
        b"httpd" in Path(f"/proc/{p}/cmdline").read_bytes()
        for p in host.cgroup_pids(first.cgroup_root)
    )


def test_volume_written_on_one_node_mounts_on_the_other(
    nodes: Cluster, busybox_image: str, namespace: str
) -> None:
    first, second = nodes.node_names
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}},
    }
    data = {
        "container": {"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
    }
    writer = pod("writer", busybox_image, f"echo written-on-{first} > /data/proof", nodeName=first)
    writer["spec"] |= {k: v for k, v in data.items() if k == "volumes"}
    writer["spec"]["containers"][0] |= data["container"]
    apply(nodes, namespace, claim, writer)
    components.wait_until(
        "writer Succeeded", lambda: phase(nodes, namespace, "writer") == "Succeeded", 90
    )
    reader = pod("reader", busybox_image, "cat /data/proof", nodeName=second)
    reader["spec"]["volumes"] = data["volumes"]
    reader["spec"]["containers"][0] |= data["container"]
    apply(nodes, namespace, reader)
    components.wait_until(
        "reader Succeeded", lambda: phase(nodes, namespace, "reader") == "Succeeded", 90
    )
    assert nodes.kubectl("logs", "-n", namespace, "reader").stdout == f"written-on-{first}\n"
    pv = get(nodes, namespace, "pvc", "data")["spec"]["volumeName"]
    volume = json.loads(nodes.kubectl("get", "pv", pv, "-o", "json").stdout)
    assert "nodeAffinity" not in volume["spec"]  # no node pinning: any node may mount it


def test_killed_node_goes_not_ready_and_its_pods_are_evicted_without_sigterm(
    nodes: Cluster, busybox_image: str, namespace: str, tmp_path: Path
) -> None:
    survivor_node, victim = nodes.node_names
    grace = nodes.state.timeouts.node_monitor_grace_s
    # Its own short toleration, so the test does not wait the cluster's default (checked
    # below on a pod without tolerations).
    tolerations = [
        {"key": f"node.kubernetes.io/{t}", "operator": "Exists", "effect": "NoExecute",
         "tolerationSeconds": 3}
        for t in ("unreachable", "not-ready")
    ]  # fmt: skip
    template = pod("x", busybox_image, MARKER, tolerations=tolerations, **marked(tmp_path))
    template["spec"].pop("restartPolicy")
    template["spec"]["affinity"] = {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "preference": {"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [victim]}]}}
            ]
        }
    }  # fmt: skip
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "app"}},
            "template": {"metadata": {"labels": {"app": "app"}}, "spec": template["spec"]},
        },
    }
    bare = pod("bare", busybox_image, "sleep 3600", nodeName=victim)
    apply(nodes, namespace, deployment, bare)

    def app_pods() -> list[dict[str, Any]]:
        out = nodes.kubectl("get", "pods", "-n", namespace, "-l", "app=app", "-o", "json")
        return list(json.loads(out.stdout)["items"])

    components.wait_until(
        "app Running on the victim",
        lambda: any(
            p["spec"].get("nodeName") == victim and p["status"].get("phase") == "Running"
            for p in app_pods()
        ),
        90,
    )
    components.wait_until("started", lambda: "started" in (tmp_path / "log").read_text(), 30)
    old = app_pods()[0]["metadata"]["name"]
    # The control plane's default tolerations (DefaultTolerationSeconds) are configurable.
    default = {
        t["key"]: t.get("tolerationSeconds")
        for t in get(nodes, namespace, "pod", "bare")["spec"]["tolerations"]
    }
    assert default["node.kubernetes.io/unreachable"] == nodes.state.timeouts.toleration_s

    victim_state = nodes.node(victim)
    t0 = time.monotonic()
    killed = nodes.kill_node(victim)
    assert killed
    assert not any(components.proc_start_time(p) for p in killed)
    assert not host.cgroup_pids(victim_state.cgroup_root)
    components.wait_until(
        f"{victim} NotReady (Unknown)", lambda: nodes.node_ready(victim) == "Unknown", grace + 30
    )
    not_ready_s = time.monotonic() - t0

    def replaced() -> bool:
        pods = {p["metadata"]["name"]: p for p in app_pods()}
        gone = old not in pods or pods[old]["metadata"].get("deletionTimestamp")
        return bool(gone) and any(
            p["spec"].get("nodeName") == survivor_node and p["status"].get("phase") == "Running"
            for p in pods.values()
        )

    components.wait_until("the pod evicted and replaced on the other node", replaced, 60)
    node = json.loads(nodes.kubectl("get", "node", victim, "-o", "json").stdout)
    taints = {(t["key"], t["effect"]) for t in node["spec"].get("taints", [])}
    assert ("node.kubernetes.io/unreachable", "NoExecute") in taints
    assert (tmp_path / "log").read_text().count("TERM") == 0  # SIGKILL only
    assert not_ready_s < grace + 30

    nodes.start_node(victim)
    assert nodes.node_ready(victim) == "True"
    # Back, the kubelet confirms the evicted pod's end: its object goes away.
    components.wait_until("the evicted pod removed", lambda: old not in {
        p["metadata"]["name"] for p in app_pods()}, 90)  # fmt: skip


def test_stopped_node_shuts_its_pods_down_gracefully_and_starts_again(
    nodes: Cluster, busybox_image: str, namespace: str, tmp_path: Path
) -> None:
    victim = nodes.node_names[1]
    apply(nodes, namespace, pod("app", busybox_image, MARKER, nodeName=victim, **marked(tmp_path)))
    components.wait_until("app Running", lambda: phase(nodes, namespace, "app") == "Running", 60)
    components.wait_until("started", lambda: "started" in (tmp_path / "log").read_text(), 30)

    stopped = cli(nodes, "node", "stop", victim)
    assert stopped.returncode == 0, stopped.stderr
    assert nodes.node(victim).status == "stopped"
    app = get(nodes, namespace, "pod", "app")
    assert app["status"]["phase"] == "Failed"
    assert app["status"]["reason"] == "Terminated"
    assert "node shutdown" in app["status"]["message"]
    conditions = {c["type"]: c for c in app["status"]["conditions"]}
    assert conditions["DisruptionTarget"]["reason"] == "TerminationByKubelet"
    assert "TERM" in (tmp_path / "log").read_text()  # the container was told, and exited
    assert nodes.node_ready(victim) != "True"

    status = cli(nodes, "status")
    listed = {n["name"]: n["status"] for n in json.loads(status.stdout)["nodes"]}
    assert listed == {nodes.node_names[0]: "up", victim: "stopped"}

    started = cli(nodes, "node", "start", victim)
    assert started.returncode == 0, started.stderr
    assert nodes.node_ready(victim) == "True"
    apply(nodes, namespace, pod("again", busybox_image, "echo back", nodeName=victim))
    components.wait_until(
        "a pod on the restarted node", lambda: phase(nodes, namespace, "again") == "Succeeded", 60
    )


def test_load_image_puts_a_users_oci_archive_into_every_node(
    nodes: Cluster, busybox_image: str, namespace: str, tmp_path: Path
) -> None:
    layout = Path(nodes.state.images[busybox_image])
    archive = tmp_path / "myapp.tar"
    tag = json.loads((layout / "index.json").read_text())["manifests"][0]["annotations"][
        "org.opencontainers.image.ref.name"
    ]
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{layout}:{tag}", f"oci-archive:{archive}"], check=True
    )
    loaded = cli(nodes, "load-image", str(archive), "myapp:1")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "docker.io/library/myapp:1"
    for i, name in enumerate(nodes.node_names):
        apply(nodes, namespace, pod(f"p{i}", "myapp:1", "echo mine", nodeName=name))
    for i in range(len(nodes.node_names)):
        components.wait_until(
            f"p{i} Succeeded", lambda i=i: phase(nodes, namespace, f"p{i}") == "Succeeded", 60
        )
