"""The local cluster's state and its clients: what every part of it works on.

Everything a cluster starts or creates is recorded in ``<state>/cluster.json``: processes (PID
and start time), ports, and per node its bridge, node IP, pod subnet, cgroup root and state
directory. So `down` - from this process or another one (the CLI after a pytest session was
killed) - stops exactly that and removes exactly that, and `hack/cluster.sh node kill NAME`
finds the node's processes in a later process than the one that started them.

`ClusterBase` holds that state with the paths and clients derived from it (kubectl, API
client, kubeconfig); the control plane (`controlplane`), the nodes (`node`), images
(`images`), credentials (`credentials`) and teardown (`teardown`) are functions over it, and
`cluster.Cluster` puts them together.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import config as k8s_config

from podckpt.devtools.cluster.binaries import ensure_binaries, kubernetes_version
from podckpt.devtools.cluster.components import Process
from podckpt.devtools.cluster.errors import ClusterError

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
NODE_NAME = "podckpt-node"  # the first node; the others are podckpt-node-2, -3, ...
STORAGE_CLASS = "standard"
HOSTPATH_PV_DIR = Path("/tmp/hostpath_pv")  # noqa: S108 (fixed by the hostpath provisioner)

TIER_APISERVER = "apiserver"
TIER_NODE = "node"

NODE_UP = "up"
NODE_STOPPED = "stopped"  # shut down gracefully (`node stop`)
NODE_KILLED = "killed"  # every process SIGKILLed (`node kill`)


def node_name(index: int) -> str:
    """Name of the ``index``-th node (1-based): the first keeps the one-node cluster's name."""
    return NODE_NAME if index == 1 else f"{NODE_NAME}-{index}"


@dataclass
class Timeouts:
    """How fast Kubernetes gives up on a node; short by default, because this is a test
    cluster (a killed node's pods are evicted in under a minute, not after 5 min 50 s).

    Production defaults, for comparison: node-monitor-grace-period 50 s, default
    not-ready/unreachable toleration 300 s, and no graceful node shutdown (0 s).
    """

    #: kube-controller-manager --node-monitor-grace-period: a node whose kubelet has not
    #: renewed its lease for this long is marked NotReady (Unknown) and tainted.
    node_monitor_grace_s: int = 20
    #: kube-apiserver --default-{not-ready,unreachable}-toleration-seconds: how long pods
    #: without their own tolerations stay on a NotReady/unreachable node before eviction.
    toleration_s: int = 30
    #: kubelet shutdownGracePeriod (graceful node shutdown, `node stop`): the time the
    #: kubelet takes to stop its pods; 5 s of it are reserved for critical pods.
    shutdown_grace_s: int = 30


@dataclass
class NodeState:
    """One node: its kubelet, containerd and fake logind, with everything of its own."""

    name: str
    index: int
    dir: str
    ip: str
    bridge: str
    network: str
    pod_subnet: str
    cgroup_root: str
    ports: dict[str, int] = field(default_factory=dict)
    status: str = NODE_UP
    #: Images of `State.images` already imported into this node's containerd.
    images: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        """The node's state directory (containerd, kubelet root, pod logs, CNI)."""
        return Path(self.dir)

    def process_name(self, component: str) -> str:
        """The first node's components keep their one-node names (kubelet, containerd)."""
        return component if self.index == 1 else f"{component}-{self.name}"


@dataclass
class State:
    """What `down` needs to undo `up`; persisted as JSON in the state dir."""

    name: str
    version: str
    tiers: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[NodeState] = field(default_factory=list)
    #: Where pods reach the apiserver (the forwarder): the first node's IP.
    node_ip: str = ""
    ip_forward: str = ""
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: Images loaded with `load_image`: ref -> OCI layout, imported into nodes added later.
    images: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        """Load a state file; keys of other versions of this code are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["nodes"] = [NodeState(**n) for n in values.get("nodes", [])]
        values["timeouts"] = Timeouts(**values.get("timeouts", {}))
        return cls(**values)


class ClusterBase:
    """State, paths and clients of a local cluster rooted at ``state_dir``."""

    def __init__(
        self,
        state_dir: Path,
        *,
        name: str = "podckpt",
        logs_dir: Path | None = None,
        apiserver_port: int | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.logs_dir = (logs_dir or state_dir / "logs").resolve()
        self._fixed_apiserver_port = apiserver_port
        self._state_file = self.state_dir / "cluster.json"
        self.state = State(name=name, version=kubernetes_version())
        if self._state_file.is_file():
            self.state = State.from_json(json.loads(self._state_file.read_text()))
        elif timeouts is not None:
            self.state.timeouts = timeouts
        self._requested_timeouts = timeouts

    # ---- paths ---------------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        """Directory of the cached Kubernetes binaries for this cluster's version."""
        return ensure_binaries(self.state.version)

    @property
    def pki_dir(self) -> Path:
        """CA, component certificates and the service-account keys."""
        return self.state_dir / "pki"

    @property
    def ca_path(self) -> Path:
        """The cluster CA certificate (trusted by the apiserver for clients and webhooks)."""
        return self.pki_dir / "ca.crt"

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (system:masters)."""
        return self.state_dir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        """The apiserver URL."""
        return f"https://127.0.0.1:{self.state.ports['apiserver']}"

    @property
    def registry(self) -> str:
        """``127.0.0.1:PORT`` of the local OCI registry (node tier)."""
        if "registry" not in self.state.ports:
            raise ClusterError("the registry runs with the node tier only")
        return f"127.0.0.1:{self.state.ports['registry']}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses: KUBECONFIG, and our kubectl first on PATH."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '')}",
        }

    # ---- clients -------------------------------------------------------------------------

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        """A `kubernetes.client.ApiClient` for the admin (or the given kubeconfig)."""
        return k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig or self.kubeconfig)
        )

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run our kubectl as admin; raises with kubectl's stderr when ``check`` fails."""
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    # ---- persistence ---------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the state file: another process (`hack/cluster.sh node stop`, say) may
        have changed it since this object read it, and a `save` would undo that."""
        if self._state_file.is_file():
            self.state = State.from_json(json.loads(self._state_file.read_text()))

    def save(self) -> None:
        """Write the state file (atomically: another process may read it at any time)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=2))
        tmp.replace(self._state_file)

    def processes(self) -> list[Process]:
        """Every recorded process (alive or not)."""
        return [Process(**p) for p in self.state.processes]

    def process(self, name: str) -> Process | None:
        """The recorded process called ``name``, if any."""
        return next((p for p in self.processes() if p.name == name), None)

    def started(self, proc: Process) -> Process:
        """Record ``proc`` (replacing an earlier one of that name) before waiting on it, so
        that a failed start still stops it."""
        self.forget(proc.name, save=False)
        self.state.processes.append(asdict(proc))
        self.save()
        return proc

    def forget(self, name: str, *, save: bool = True) -> None:
        """Drop the record of process ``name`` (it was stopped or killed)."""
        self.state.processes = [p for p in self.state.processes if p["name"] != name]
        if save:
            self.save()

    # ---- nodes ---------------------------------------------------------------------------

    @property
    def node_names(self) -> list[str]:
        """Names of the cluster's nodes, in the order they were added."""
        return [n.name for n in self.state.nodes]

    def node(self, name: str) -> NodeState:
        """The node called ``name``; a clear error naming the nodes there are otherwise."""
        for n in self.state.nodes:
            if n.name == name:
                return n
        raise ClusterError(f"no node {name!r}; the nodes are: {', '.join(self.node_names)}")
