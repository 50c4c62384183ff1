"""A node's kubelet: its configuration, start and readiness.

Choices, each forced by this machine (TEST-CLUSTER.md) or by "leave the host as found":
cgroupfs under the node's own cgroup root (``/podckpt-<bridge>``), `failCgroupV1: false`
(cgroup v1 hosts), `failSwapOn: false`, its own root dir, cert dir and pod-log dir,
`seccompDefault: false` so `Unconfined` and added capabilities (CHECKPOINT_RESTORE,
SYS_PTRACE, SYS_ADMIN...) are simply not forbidden for checkpointed containers, and disk
eviction thresholds at 1% (the disk is shared with development).

Several kubelets on one machine: each has its own node IP (its bridge), ports (API and healthz,
picked free), root dir, pod-log dir, cgroup root and containerd. What stays shared is fixed in
the kubelet: /var/lib/kubelet/device-plugins (no device plugins are used) and the links in
/var/log/containers (named per container; `down` removes each node's).

Graceful node shutdown: the kubelet takes a logind "delay" inhibitor over D-Bus and, when
logind announces PrepareForShutdown, stops its pods within `shutdownGracePeriod`. There is no
systemd-logind here, so each node has a stand-in (`logind`) on a bus socket of its own,
which the kubelet finds through DBUS_SYSTEM_BUS_ADDRESS.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from podckpt.devtools.cluster import components, containerd, credentials
from podckpt.devtools.cluster.components import Process
from podckpt.devtools.cluster.state import ClusterBase, NodeState

#: The lease is renewed every quarter of its duration: every 5 s, well inside the control
#: plane's node-monitor grace period (`state.Timeouts`, 20 s by default).
NODE_LEASE_SECONDS = 20
CRITICAL_PODS_SHARE_S = 5


def config(
    node: NodeState, *, ca: Path, serving_cert: Path, serving_key: Path, shutdown_grace_s: int
) -> Path:
    """KubeletConfiguration of ``node`` (see the module docstring for each choice)."""
    cfg = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.ip,
        "port": node.ports["kubelet"],
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": node.ports["kubelet-healthz"],
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(serving_cert),
        "tlsPrivateKeyFile": str(serving_key),
        "containerRuntimeEndpoint": f"unix://{containerd.socket(node.path)}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "cgroupsPerQOS": True,
        "failCgroupV1": False,
        "failSwapOn": False,
        "seccompDefault": False,
        "podLogsDir": str(pod_logs_dir(node)),
        "resolvConf": "",
        "clusterDomain": "cluster.local",
        "staticPodPath": "",
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "protectKernelDefaults": False,
        "makeIPTablesUtilChains": False,
        "localStorageCapacityIsolation": True,
        # The disk is shared with the developer's work: never evict test pods for it.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "nodeStatusUpdateFrequency": "4s",
        "nodeLeaseDurationSeconds": NODE_LEASE_SECONDS,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "maxPods": 110,
        "shutdownGracePeriod": f"{shutdown_grace_s}s",
        "shutdownGracePeriodCriticalPods": (
            f"{CRITICAL_PODS_SHARE_S}s" if shutdown_grace_s > 2 * CRITICAL_PODS_SHARE_S else "0s"
        ),
    }
    path = node.path / "kubelet-config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def root_dir(node: NodeState) -> Path:
    """The kubelet's --root-dir (what /var/lib/kubelet is on a machine)."""
    return node.path / "kubelet"


def pod_logs_dir(node: NodeState) -> Path:
    """The kubelet's podLogsDir (what /var/log/pods is on a machine)."""
    return node.path / "pod-logs"


def bus_address(node: NodeState) -> str:
    """The node's D-Bus "system bus": its logind stand-in's socket."""
    return f"unix:path={node.path / 'logind.sock'}"


def start(c: ClusterBase, node: NodeState, bin_dir: Path) -> Process:
    """Start the node's kubelet (not waiting for the node to be Ready: see `wait_ready`)."""
    kubeconfig, serving = credentials.write_node(c, node)
    cfg = config(
        node,
        ca=c.ca_path,
        serving_cert=serving.cert,
        serving_key=serving.key,
        shutdown_grace_s=c.state.timeouts.shutdown_grace_s,
    )
    return c.started(
        components.start(
            node.process_name("kubelet"),
            [
                str(bin_dir / "kubelet"),
                f"--config={cfg}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={root_dir(node)}",
                f"--cert-dir={root_dir(node) / 'pki'}",
                f"--hostname-override={node.name}",
                f"--node-ip={node.ip}",
                "--v=1",
            ],
            c.logs_dir,
            env={"DBUS_SYSTEM_BUS_ADDRESS": bus_address(node)},
        )
    )


def ready(c: ClusterBase, name: str) -> str:
    """The node's Ready condition: "True", "False", "Unknown", or "" if it is not registered."""
    return c.kubectl(
        "get",
        "node",
        name,
        "-o",
        'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
        check=False,
    ).stdout.strip()


def wait_ready(c: ClusterBase, nodes: list[NodeState], timeout: float = 90) -> None:
    """Wait until every node in ``nodes`` is Ready (fails fast when a kubelet dies)."""
    for node in nodes:
        name = node.name
        components.wait_until(
            f"node {name} Ready",
            lambda: ready(c, name) == "True",  # noqa: B023 (called before `name` changes)
            timeout,
            c.process(node.process_name("kubelet")),
            interval=0.3,
        )
