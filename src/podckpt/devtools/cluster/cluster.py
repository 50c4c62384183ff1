"""The local cluster, shared by hack/cluster.sh, the pytest fixtures, benchmarks and the demo.

Two tiers. `apiserver`: etcd + kube-apiserver + kube-controller-manager; enough for admission,
RBAC, garbage collection, service accounts and PVC binding (the controller-manager's hostpath
provisioner backs the default StorageClass), in ~10 s when the binaries are cached. `node`:
adds kube-scheduler, a local OCI registry and one or more nodes (each its own kubelet,
containerd and logind stand-in), so pods really run; it is started on top of a running
apiserver tier (one control plane per session), and nodes can be added to it later.

`Cluster` puts the parts together; each lives in its own module: the state and clients
(`state`), certificates and kubeconfigs (`credentials`, `pki`), the control plane
(`controlplane`), nodes (`node`, with `network`, `containerd`, `kubelet`, `logind`, `host`),
images and the registry (`images`), and teardown (`teardown`).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from podckpt.devtools.cluster import (
    components,
    containerd,
    controlplane,
    credentials,
    host,
    images,
    kubelet,
    network,
    node,
    pki,
    teardown,
)
from podckpt.devtools.cluster.binaries import BINARIES
from podckpt.devtools.cluster.errors import ClusterError, PrerequisiteError
from podckpt.devtools.cluster.state import (
    NODE_NAME,
    NODE_UP,
    STORAGE_CLASS,
    TIER_APISERVER,
    TIER_NODE,
    ClusterBase,
    NodeState,
    State,
    Timeouts,
)

__all__ = [
    "NODE_NAME",
    "STORAGE_CLASS",
    "TIER_APISERVER",
    "TIER_NODE",
    "Cluster",
    "Timeouts",
    "check_prerequisites",
]


def check_prerequisites(tier: str) -> None:
    """Fail in one line when something the tier needs is not on this machine."""
    if os.geteuid() != 0:
        raise PrerequisiteError("the local cluster needs root (it runs etcd, kubelet, mounts)")
    tools = {"etcd": "etcd-server"}
    if tier == TIER_NODE:
        tools |= {
            "containerd": "containerd",
            "ctr": "containerd",
            "runc": "runc",
            "umoci": "umoci",
            "skopeo": "skopeo",
            "docker-registry": "docker-registry",
            "ip": "iproute2",
        }
    for tool, package in tools.items():
        if shutil.which(tool) is None:
            raise PrerequisiteError(
                f"{tool} is missing; run hack/setup.sh (Debian package {package})"
            )
    if tier == TIER_NODE:
        network.cni_bin_dir()


class Cluster(ClusterBase):
    """A local Kubernetes cluster rooted at ``state_dir`` (see the module docstring)."""

    def running(self, tier: str = TIER_APISERVER) -> bool:
        """True when ``tier`` was started and all its processes still run (the processes of
        nodes stopped or killed on purpose are no longer recorded)."""
        procs = self.processes()
        return tier in self.state.tiers and bool(procs) and all(p.alive() for p in procs)

    # ---- apiserver tier --------------------------------------------------------------------

    def up_apiserver(self) -> None:
        """Start etcd, kube-apiserver and kube-controller-manager (no-op if running)."""
        if self.running(TIER_APISERVER):
            return
        check_prerequisites(TIER_APISERVER)
        if self.state.processes:
            self._start_clean("the apiserver tier was found half-dead")
        self.state = State(
            name=self.state.name,
            version=self.state.version,
            timeouts=self._requested_timeouts or self.state.timeouts,
        )
        ports = self.state.ports
        if self._fixed_apiserver_port:  # checked first: a busy port leaves nothing behind
            ports["apiserver"] = components.require_free_port(
                self._fixed_apiserver_port, "kube-apiserver", "PODCKPT_APISERVER_PORT"
            )
        else:
            ports["apiserver"] = components.free_port()
        bin_dir = self.bin_dir  # builds (minutes) on a fresh machine
        t0 = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for key in ("etcd", "etcd-peer", "controller-manager"):
            ports[key] = components.free_port()
        self.state.tiers = [TIER_APISERVER]
        self.save()
        try:
            credentials.write_control_plane(self)
            controlplane.start_etcd(self)
            self.state.timings["etcd"] = time.monotonic() - t0
            controlplane.start_apiserver(self, bin_dir)
            self.state.timings["apiserver"] = time.monotonic() - t0
            controlplane.start_controller_manager(self, bin_dir)
            controlplane.bootstrap_objects(self)
            self.state.timings["apiserver_tier"] = time.monotonic() - t0
            self.save()
        except BaseException:
            self.down(keep_logs=True)
            raise

    # ---- node tier -------------------------------------------------------------------------

    def up_node(self, nodes: int = 1) -> None:
        """Add scheduler, registry and ``nodes`` nodes to a running apiserver tier; on a
        running node tier, add the nodes that are missing (never removes any)."""
        if self.running(TIER_NODE):
            if len(self.state.nodes) < nodes:
                self.add_nodes(nodes)
            return
        check_prerequisites(TIER_NODE)
        if TIER_NODE in self.state.tiers:
            self._start_clean("the node tier was found half-dead")
        if not self.running(TIER_APISERVER):
            self.up_apiserver()
        bin_dir = self.bin_dir
        t0 = time.monotonic()
        st = self.state
        for key in ("scheduler", "registry"):
            st.ports[key] = components.free_port()
        st.ip_forward = host.read_ip_forward()
        st.tiers.append(TIER_NODE)
        self.save()
        try:
            scheduler = controlplane.start_scheduler(self, bin_dir)
            images.start_registry(self)
            self._add_nodes(nodes, bin_dir)
            controlplane.wait_healthz("kube-scheduler", st.ports["scheduler"], 30, scheduler)
            st.timings["node_tier"] = time.monotonic() - t0
            self.save()
        except BaseException:
            self.down(keep_logs=True)
            raise

    def _start_clean(self, why: str) -> None:
        """Stop everything of a half-dead earlier cluster before starting again. Its logs are
        kept (the new processes append to them) and `restarts.log` says which processes had
        died: without them a mid-session restart (a kube-apiserver that did not come back
        from a fault test) left nothing to find the cause with, and every later test failed
        on images and objects the new cluster never had."""
        dead = [p.name for p in self.processes() if not p.alive()]
        self.note_restart(f"{why}; dead: {', '.join(dead) or 'none'}; starting clean\n")
        self.down(keep_logs=True)

    def note_restart(self, text: str) -> None:
        """Append `text`, stamped, to `<logs>/restarts.log`: what a restart of a component
        found (kept with the logs when a test fails)."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with (self.logs_dir / "restarts.log").open("a") as out:
            out.write(f"--- {time.strftime('%H:%M:%S')} {text}")

    def add_nodes(self, total: int) -> list[str]:
        """Grow a running node tier to ``total`` nodes (started in parallel, each Ready on
        return); returns the names of the nodes added. A node that fails to start is
        removed again, and the error raised."""
        if not self.running(TIER_NODE):
            self.up_node(nodes=total)
            return self.node_names
        before = set(self.node_names)
        self._add_nodes(total, self.bin_dir)
        return [n for n in self.node_names if n not in before]

    def _add_nodes(self, total: int, bin_dir: Path) -> None:
        st = self.state
        t0 = time.monotonic()
        new: list[NodeState] = []
        for index in range(len(st.nodes) + 1, total + 1):
            n = node.plan(self, index)
            st.nodes.append(n)
            new.append(n)
        self.save()
        try:
            for n in new:
                node.setup_network(n)
            if self.process("apiserver-forward") is None:
                st.node_ip = st.nodes[0].ip
                controlplane.start_apiserver_forward(self)
            if images.PAUSE_REF not in st.images:
                layout = images.layout_dir(self.state_dir, images.PAUSE_REF)
                images.build_layout(images.pause_binary(), images.PAUSE_REF, layout)
                images.push(layout, self.registry, images.PAUSE_REF)
                st.images[images.PAUSE_REF] = str(layout)
            for n in new:
                node.launch(self, n, bin_dir)
                st.timings[f"launched:{n.name}"] = time.monotonic() - t0
            kubelet.wait_ready(self, new)
            st.timings["nodes_ready"] = time.monotonic() - t0
            self.save()
        except BaseException:
            if len(new) < len(st.nodes):  # growing a running cluster: leave the rest running
                for n in new:
                    self._remove_node(n)
            raise

    def _remove_node(self, n: NodeState) -> None:
        node.remove(n, 10, {p.name: p for p in self.processes()})
        for component in node.COMPONENTS:
            self.forget(n.process_name(component), save=False)
        self.state.nodes = [x for x in self.state.nodes if x.name != n.name]
        self.save()
        self.kubectl("delete", "node", n.name, "--ignore-not-found", check=False)

    # ---- node operations (what happens to machines) ------------------------------------

    def stop_node(self, name: str) -> dict[str, float]:
        """Shut node ``name`` down gracefully (kubelet graceful node shutdown: its pods end
        Failed, reason Terminated); returns the seconds each step took. See `node.stop`."""
        return node.stop(self, self.node(name))

    def kill_node(self, name: str) -> list[int]:
        """Kill node ``name`` like a machine that dies: SIGKILL to its kubelet, containerd,
        shims and containers, no SIGTERM to anything; returns the PIDs killed."""
        return node.kill(self, self.node(name))

    def start_node(self, name: str, *, wait: bool = True) -> None:
        """Bring a stopped or killed node back (as after a reboot) and wait until Ready."""
        node.start(self, self.node(name), self.bin_dir, wait=wait)

    def node_ready(self, name: str) -> str:
        """Node ``name``'s Ready condition as the API shows it: "True", "False", "Unknown"."""
        return kubelet.ready(self, name)

    def node_of(self, namespace: str, pod: str) -> str:
        """The node pod ``namespace/pod`` is bound to ("" if none, or no such pod)."""
        return self.kubectl(
            "get", "pod", pod, "-n", namespace, "-o", "jsonpath={.spec.nodeName}", check=False
        ).stdout.strip()

    # ---- images ----------------------------------------------------------------------------

    def load_image(
        self,
        source: Path,
        ref: str,
        *,
        entrypoint: list[str] | None = None,
        cmd: list[str] | None = None,
        push: bool = True,
        user: str | None = None,
    ) -> str:
        """rootfs dir / static binary / OCI layout / image archive -> image ``ref`` in every
        node's containerd (also nodes added or started later). Returns the name pods use:
        ``ref`` as the CRI names it (``myapp:1`` -> ``docker.io/library/myapp:1``).

        With ``push`` (default) the same image also goes to the local registry, as
        `registry_ref(ref)`, so code that reads image configs from a registry sees it too.
        ``user``: the image config's USER.
        """
        if not self.running(TIER_NODE):
            raise ClusterError("load_image needs the node tier")
        ref = images.normalize_ref(ref)
        layout = images.build_layout(
            Path(source),
            ref,
            images.layout_dir(self.state_dir, ref),
            entrypoint=entrypoint,
            cmd=cmd,
            user=user,
        )
        images.load(self, layout, ref)
        if push:
            images.push(layout, self.registry, ref)
        return ref

    def registry_ref(self, ref: str) -> str:
        """Where `load_image`/`push_image` put ``ref`` in the local registry
        (``podckpt.local/busybox:1`` -> ``127.0.0.1:PORT/busybox:1``)."""
        return images.registry_ref(self.registry, ref)

    def push_image(
        self,
        source: Path,
        ref: str,
        *,
        entrypoint: list[str] | None = None,
        cmd: list[str] | None = None,
    ) -> str:
        """Build ``ref`` like `load_image` and push it to the local registry only.

        Returns the registry reference (``127.0.0.1:PORT/repo:tag``), pullable by the nodes.
        """
        safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in ref)
        layout = images.build_layout(
            Path(source),
            ref,
            self.state_dir / "images" / f"push-{safe}",
            entrypoint=entrypoint,
            cmd=cmd,
        )
        return images.push(layout, self.registry, ref)

    # ---- namespaces and users --------------------------------------------------------------

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> str:
        """Create a namespace and wait for its ``default`` ServiceAccount.

        Pods cannot be created in a namespace before the controller-manager has made that
        account, so tests that create pods right away should use this.
        """
        label_args = [f"{k}={v}" for k, v in (labels or {}).items()]
        self.kubectl("create", "namespace", name)
        if label_args:
            self.kubectl("label", "namespace", name, *label_args)
        components.wait_until(
            f"ServiceAccount {name}/default",
            lambda: (
                self.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode
                == 0
            ),
            30,
            interval=0.2,
        )
        return name

    def serving_cert(self, basename: str, hosts: tuple[str, ...]) -> pki.CertPair:
        """A serving certificate from the cluster CA, e.g. for a webhook on 127.0.0.1.

        Pair it with `ca_path` as the webhook's caBundle.
        """
        return credentials.serving_cert(self, basename, hosts)

    def token_kubeconfig(
        self, namespace: str, serviceaccount: str, *, expiration_seconds: int = 86400
    ) -> Path:
        """A kubeconfig that acts as ``namespace/serviceaccount`` (created if missing).

        The operator's tests run with the operator's RBAC, not as admin: bind roles to the
        service account, then use this kubeconfig.
        """
        return credentials.token_kubeconfig(
            self, namespace, serviceaccount, expiration_seconds=expiration_seconds
        )

    # ---- teardown and reporting ------------------------------------------------------------

    def down(self, *, keep_logs: bool = False) -> None:
        """Stop what `up` started (by PID) and remove mounts, bridges, cgroups and state
        (see `teardown`). Harmless when nothing runs. With ``keep_logs`` the logs survive."""
        teardown.down(self, keep_logs=keep_logs)
        self.state = State(name=self.state.name, version=self.state.version)

    def rss_bytes(self) -> dict[str, int]:
        """RSS per component including children (containerd's shims, the pods' processes)."""
        out = {}
        for p in self.processes():
            if p.alive():
                pids = [p.pid, *components.descendants(p.pid)]
                out[p.name] = sum(components.rss_bytes(x) for x in pids)
        for n in self.state.nodes:
            for pid in containerd.shim_pids(n.path):
                pids = [pid, *components.descendants(pid)]
                out["containerd-shims+pods"] = out.get("containerd-shims+pods", 0) + sum(
                    components.rss_bytes(x) for x in pids
                )
        return out

    def describe(self) -> dict[str, Any]:
        """Status for humans and benchmarks: version, tiers, nodes, ports, PIDs, timings."""
        api_up = self.running(TIER_APISERVER) or bool(self.process("kube-apiserver"))
        return {
            "version": self.state.version,
            "state_dir": str(self.state_dir),
            "kubeconfig": str(self.kubeconfig),
            "tiers": self.state.tiers,
            "nodes": [
                {
                    "name": n.name,
                    "status": n.status,
                    "ready": self.node_ready(n.name) if api_up and n.status == NODE_UP else "",
                    "ip": n.ip,
                    "pod_subnet": n.pod_subnet,
                    "bridge": n.bridge,
                    "cgroup_root": n.cgroup_root,
                    "dir": n.dir,
                    "ports": n.ports,
                }
                for n in self.state.nodes
            ],
            "ports": self.state.ports,
            "processes": {
                p.name: {"pid": p.pid, "alive": p.alive(), "log": p.log} for p in self.processes()
            },
            "node_ip": self.state.node_ip,
            "timeouts": vars(self.state.timeouts),
            "timings": {k: round(v, 2) for k, v in self.state.timings.items()},
            "binaries": [str(Path(str(self.bin_dir)) / b) for b in BINARIES],
        }
