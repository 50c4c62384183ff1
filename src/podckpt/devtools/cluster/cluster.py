"""The two tiers of the local cluster, shared by hack/cluster.sh, the fixtures and benchmarks.

`apiserver` tier: etcd + kube-apiserver + kube-controller-manager. Enough for admission,
RBAC, garbage collection, service accounts and PVC binding (the controller-manager's hostpath
provisioner backs the default StorageClass), in ~10 s when the binaries are cached.

`node` tier: adds kube-scheduler, containerd, the kubelet and a local OCI registry, so pods
really run. It is started on top of a running apiserver tier: one control plane per session.

Everything a cluster starts or creates is recorded in ``<state>/cluster.json`` (PIDs with start
times, ports, bridge, cgroup root), so `down` - from this process or another one - stops
exactly that and removes exactly that.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes import config as k8s_config

from podckpt.devtools.cluster import components, images, node, pki
from podckpt.devtools.cluster.binaries import BINARIES, ensure_binaries, kubernetes_version
from podckpt.devtools.cluster.components import Process
from podckpt.devtools.cluster.errors import ClusterError, PrerequisiteError

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
NODE_NAME = "podckpt-node"
STORAGE_CLASS = "standard"
HOSTPATH_PV_DIR = Path("/tmp/hostpath_pv")  # noqa: S108 (fixed by the hostpath provisioner)

TIER_APISERVER = "apiserver"
TIER_NODE = "node"


@dataclass
class State:
    """What `down` needs to undo `up`; persisted as JSON in the state dir."""

    name: str
    version: str
    tiers: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[dict[str, Any]] = field(default_factory=list)
    bridge: str = ""
    network: str = ""
    pod_subnet: str = ""
    node_ip: str = ""
    cgroup_root: str = ""
    ip_forward: str = ""
    timings: dict[str, float] = field(default_factory=dict)


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
        node.cni_bin_dir()


class Cluster:
    """A local Kubernetes cluster rooted at ``state_dir`` (see the module docstring)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        name: str = "podckpt",
        logs_dir: Path | None = None,
        apiserver_port: int | None = None,
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.logs_dir = (logs_dir or state_dir / "logs").resolve()
        self._fixed_apiserver_port = apiserver_port
        self.state = State(name=name, version=kubernetes_version())
        self._state_file = self.state_dir / "cluster.json"
        if self._state_file.is_file():
            self.state = State(**json.loads(self._state_file.read_text()))
        self._api: Any = None

    # ---- paths and clients ---------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        """Directory of the cached Kubernetes binaries for this cluster's version."""
        return ensure_binaries(self.state.version)

    @property
    def pki_dir(self) -> Path:
        """CA, component certificates and the service-account keys."""
        return self.state_dir / "pki"

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (system:masters)."""
        return self.state_dir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        """The apiserver URL."""
        return f"https://127.0.0.1:{self.state.ports['apiserver']}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses: KUBECONFIG, and our kubectl first on PATH."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '')}",
        }

    @property
    def registry(self) -> str:
        """``127.0.0.1:PORT`` of the local OCI registry (node tier)."""
        if "registry" not in self.state.ports:
            raise ClusterError("the registry runs with the node tier only")
        return f"127.0.0.1:{self.state.ports['registry']}"

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

    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=2))
        tmp.replace(self._state_file)

    def _processes(self) -> list[Process]:
        return [Process(**p) for p in self.state.processes]

    def _started(self, proc: Process) -> Process:
        self.state.processes = [p for p in self.state.processes if p["name"] != proc.name]
        self.state.processes.append(asdict(proc))
        self._save()
        return proc

    def running(self, tier: str = TIER_APISERVER) -> bool:
        """True when ``tier`` was started and all its processes still run."""
        procs = self._processes()
        return tier in self.state.tiers and bool(procs) and all(p.alive() for p in procs)

    def rss_bytes(self) -> dict[str, int]:
        """RSS per component including children (containerd's shims, the pods' processes)."""
        out = {}
        for p in self._processes():
            if p.alive():
                pids = [p.pid, *components.descendants(p.pid)]
                out[p.name] = sum(components.rss_bytes(x) for x in pids)
        for pid in self._shim_pids():
            pids = [pid, *components.descendants(pid)]
            out["containerd-shims+pods"] = out.get("containerd-shims+pods", 0) + sum(
                components.rss_bytes(x) for x in pids
            )
        return out

    def _shim_pids(self) -> list[int]:
        sock = str(node.containerd_socket(self.state_dir)).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    argv = (entry / "cmdline").read_bytes().split(b"\0")
                    if argv[0].endswith(b"containerd-shim-runc-v2") and sock in argv:
                        pids.append(int(entry.name))
        return pids

    # ---- apiserver tier --------------------------------------------------------------------

    def up_apiserver(self) -> None:
        """Start etcd, kube-apiserver and kube-controller-manager (no-op if running)."""
        if self.running(TIER_APISERVER):
            return
        check_prerequisites(TIER_APISERVER)
        if self.state.processes:
            self.down()  # a half-dead earlier cluster: start clean
        self.state = State(name=self.state.name, version=self.state.version)
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
        self._save()
        try:
            self._write_pki()
            self._start_etcd()
            self.state.timings["etcd"] = time.monotonic() - t0
            self._start_apiserver(bin_dir)
            self.state.timings["apiserver"] = time.monotonic() - t0
            self._start_controller_manager(bin_dir)
            self._bootstrap_objects()
            self.state.timings["apiserver_tier"] = time.monotonic() - t0
            self._save()
        except BaseException:
            self.down(keep_logs=True)
            raise

    def _write_pki(self) -> None:
        ca = pki.CertificateAuthority(self.pki_dir)
        self._ca = ca
        d = self.state_dir
        server = self.server
        ca.issue(
            "apiserver",
            "kube-apiserver",
            dns=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ips=("127.0.0.1", SERVICE_IP),
            server=True,
        )
        ca.issue("apiserver-kubelet-client", "kube-apiserver", client=True)
        pki.service_account_keys(self.pki_dir)
        users = {
            "admin": ("kubernetes-admin", ("system:masters",)),
            # system:masters: see --use-service-account-credentials=false below.
            "controller-manager": ("system:kube-controller-manager", ("system:masters",)),
            "scheduler": ("system:kube-scheduler", ()),
            "kubelet": (f"system:node:{NODE_NAME}", ("system:nodes",)),
        }
        for base, (cn, orgs) in users.items():
            pair = ca.issue(base, cn, orgs=orgs, client=True)
            pki.write_kubeconfig(
                d / f"{base}.kubeconfig", server, ca.cert_path, user=cn, client=pair
            )

    def _start_etcd(self) -> None:
        p = self.state.ports
        data = self.state_dir / "etcd"
        proc = self._started(
            components.start(
                "etcd",
                [
                    "etcd",
                    "--name=podckpt",
                    f"--data-dir={data}",
                    f"--listen-client-urls=http://127.0.0.1:{p['etcd']}",
                    f"--advertise-client-urls=http://127.0.0.1:{p['etcd']}",
                    f"--listen-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
                    f"--initial-cluster=podckpt=http://127.0.0.1:{p['etcd-peer']}",
                    "--listen-metrics-urls=",
                    "--quota-backend-bytes=2147483648",
                    "--snapshot-count=10000",
                    "--log-level=warn",
                    "--logger=zap",
                ],
                self.logs_dir,
                env={"ETCD_UNSUPPORTED_ARCH": ""},
            )
        )
        components.wait_until(
            "etcd /health",
            lambda: components.http_ok(
                f"http://127.0.0.1:{p['etcd']}/health", expect='"health":"true"'
            ),
            30,
            proc,
        )

    def _start_apiserver(self, bin_dir: Path) -> None:
        p = self.state.ports
        k = self.pki_dir
        proc = self._started(
            components.start(
                "kube-apiserver",
                [
                    str(bin_dir / "kube-apiserver"),
                    f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={p['apiserver']}",
                    f"--cert-dir={k}",
                    f"--tls-cert-file={k / 'apiserver.crt'}",
                    f"--tls-private-key-file={k / 'apiserver.key'}",
                    f"--client-ca-file={k / 'ca.crt'}",
                    f"--service-account-key-file={k / 'sa.pub'}",
                    f"--service-account-signing-key-file={k / 'sa.key'}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--authorization-mode=Node,RBAC",
                    "--enable-admission-plugins=NodeRestriction",
                    "--allow-privileged=true",
                    f"--kubelet-client-certificate={k / 'apiserver-kubelet-client.crt'}",
                    f"--kubelet-client-key={k / 'apiserver-kubelet-client.key'}",
                    "--kubelet-preferred-address-types=InternalIP,Hostname",
                    # Loopback may not be the `kubernetes` Service's endpoint; nothing in
                    # the tests reaches the apiserver through that Service.
                    "--endpoint-reconciler-type=none",
                    # No kube-proxy: webhooks (and aggregated APIs) behind a Service are
                    # called at the Service's endpoint (the pod IP on the bridge), not at its
                    # ClusterIP, which leads nowhere here.
                    "--enable-aggregator-routing=true",
                    "--profiling=false",
                    "--v=1",
                ],
                self.logs_dir,
            )
        )
        ctx = components.client_context(k / "ca.crt", k / "admin.crt", k / "admin.key")
        components.wait_until(
            "kube-apiserver /readyz",
            lambda: components.http_ok(f"{self.server}/readyz", context=ctx, expect="ok"),
            60,
            proc,
        )

    def _start_controller_manager(self, bin_dir: Path) -> None:
        p = self.state.ports
        k = self.pki_dir
        kc = self.state_dir / "controller-manager.kubeconfig"
        proc = self._started(
            components.start(
                "kube-controller-manager",
                [
                    str(bin_dir / "kube-controller-manager"),
                    f"--kubeconfig={kc}",
                    f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={p['controller-manager']}",
                    "--leader-elect=false",
                    # One identity for all controllers instead of a service account each:
                    # minting ~40 accounts and tokens at start costs 4-9 s of the tier's
                    # start-up here, and controllers' own RBAC is not what podckpt tests.
                    "--use-service-account-credentials=false",
                    f"--service-account-private-key-file={k / 'sa.key'}",
                    f"--root-ca-file={k / 'ca.crt'}",
                    f"--cluster-signing-cert-file={k / 'ca.crt'}",
                    f"--cluster-signing-key-file={k / 'ca.key'}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--enable-hostpath-provisioner=true",
                    "--cluster-name=podckpt",
                    "--profiling=false",
                    "--v=1",
                ],
                self.logs_dir,
            )
        )
        _wait_healthz("kube-controller-manager", p["controller-manager"], 60, proc)

    def _bootstrap_objects(self) -> None:
        """Default StorageClass, apiserver->kubelet RBAC; then wait for the default
        ServiceAccount (pods cannot be created before the controller-manager made it)."""
        manifest = f"""
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: {STORAGE_CLASS}
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: podckpt:kube-apiserver-kubelet-api-admin
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:kubelet-api-admin
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: kube-apiserver
"""
        components.wait_until(
            "bootstrap objects",
            lambda: self.kubectl("apply", "-f", "-", input=manifest, check=False).returncode == 0,
            30,
        )
        cm = next(p for p in self._processes() if p.name == "kube-controller-manager")
        components.wait_until(
            "ServiceAccount default/default",
            lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
            30,
            cm,
            interval=0.2,
        )

    # ---- node tier -------------------------------------------------------------------------

    def up_node(self) -> None:
        """Add scheduler, registry, containerd and kubelet to a running apiserver tier."""
        if self.running(TIER_NODE):
            return
        check_prerequisites(TIER_NODE)
        if TIER_NODE in self.state.tiers:
            self.down()  # a half-dead node tier: start clean
        if not self.running(TIER_APISERVER):
            self.up_apiserver()
        bin_dir = self.bin_dir
        t0 = time.monotonic()
        st = self.state
        for key in ("scheduler", "registry", "kubelet", "kubelet-healthz"):
            st.ports[key] = components.free_port()
        subnet = node.pick_pod_subnet(self.state_dir.as_posix())
        st.bridge = node.bridge_name(self.state_dir.as_posix())
        st.network = f"podckpt-{st.bridge}"
        st.pod_subnet = str(subnet)
        st.node_ip = str(next(subnet.hosts()))
        st.cgroup_root = f"/podckpt-{st.bridge}"
        st.ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        st.tiers.append(TIER_NODE)
        self._save()
        try:
            self._start_scheduler(bin_dir)
            self._start_registry()
            node.create_bridge(st.bridge, st.node_ip, subnet.prefixlen)
            self._start_apiserver_forward()
            cni_dir = self.state_dir / "cni"
            node.write_cni_config(
                cni_dir / "net.d", cni_dir / "ipam", st.network, st.bridge, subnet
            )
            self._start_containerd(cni_dir / "net.d")
            st.timings["containerd"] = time.monotonic() - t0
            pause = images.load_image(self.state_dir, images.pause_binary(), images.PAUSE_REF)
            images.push(pause, self.registry, images.PAUSE_REF)
            st.timings["pause_image"] = time.monotonic() - t0
            node.create_cgroup_root(st.cgroup_root)
            self._start_kubelet(bin_dir)
            _wait_healthz("kube-scheduler", st.ports["scheduler"], 30, self._scheduler_proc)
            st.timings["node_tier"] = time.monotonic() - t0
            self._save()
        except BaseException:
            self.down(keep_logs=True)
            raise

    def _start_scheduler(self, bin_dir: Path) -> None:
        kc = self.state_dir / "scheduler.kubeconfig"
        proc = self._started(
            components.start(
                "kube-scheduler",
                [
                    str(bin_dir / "kube-scheduler"),
                    f"--kubeconfig={kc}",
                    f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={self.state.ports['scheduler']}",
                    "--leader-elect=false",
                    "--profiling=false",
                    "--v=1",
                ],
                self.logs_dir,
            )
        )
        self._scheduler_proc = proc

    def _start_apiserver_forward(self) -> None:
        """The apiserver at https://<node IP>:443 for pods (in-cluster operators): see
        `podckpt.devtools.cluster.forward`. 443 because kopf's service-account login uses
        `https://kubernetes.default.svc` whatever the environment says."""
        port = str(self.state.ports["apiserver"])
        argv = [sys.executable, "-m", "podckpt.devtools.cluster.forward"]
        argv += [self.state.node_ip, "443", "127.0.0.1", port]
        proc = self._started(components.start("apiserver-forward", argv, self.logs_dir))
        components.wait_until(
            "apiserver forward",
            lambda: components.tcp_open(self.state.node_ip, 443),
            10,
            proc,
        )

    def _start_registry(self) -> None:
        cfg = images.registry_config(self.state_dir, self.state.ports["registry"])
        proc = self._started(
            components.start("registry", ["docker-registry", "serve", str(cfg)], self.logs_dir)
        )
        components.wait_until(
            "registry /v2/",
            lambda: components.http_ok(f"http://{self.registry}/v2/"),
            20,
            proc,
        )

    def _start_containerd(self, cni_conf_dir: Path) -> None:
        cfg = node.containerd_config(self.state_dir, images.PAUSE_REF, self.registry, cni_conf_dir)
        proc = self._started(
            components.start("containerd", ["containerd", "--config", str(cfg)], self.logs_dir)
        )
        components.wait_until(
            "containerd",
            lambda: (
                subprocess.run(
                    ["ctr", "--address", str(node.containerd_socket(self.state_dir)), "version"],
                    capture_output=True,
                    check=False,
                    timeout=5,
                ).returncode
                == 0
            ),
            30,
            proc,
        )

    def _start_kubelet(self, bin_dir: Path) -> None:
        st = self.state
        ca = pki.CertificateAuthority(self.pki_dir)
        serving = ca.issue(
            "kubelet-serving",
            NODE_NAME,
            dns=(NODE_NAME, "localhost"),
            ips=(st.node_ip, "127.0.0.1"),
            server=True,
        )
        cfg = node.kubelet_config(
            self.state_dir,
            node_ip=st.node_ip,
            port=st.ports["kubelet"],
            healthz_port=st.ports["kubelet-healthz"],
            ca=ca.cert_path,
            serving_cert=serving.cert,
            serving_key=serving.key,
            cgroup_root=st.cgroup_root,
        )
        proc = self._started(
            components.start(
                "kubelet",
                [
                    str(bin_dir / "kubelet"),
                    f"--config={cfg}",
                    f"--kubeconfig={self.state_dir / 'kubelet.kubeconfig'}",
                    f"--root-dir={self.state_dir / 'kubelet'}",
                    f"--cert-dir={self.state_dir / 'kubelet' / 'pki'}",
                    f"--hostname-override={NODE_NAME}",
                    f"--node-ip={st.node_ip}",
                    "--v=1",
                ],
                self.logs_dir,
            )
        )
        components.wait_until(
            f"node {NODE_NAME} Ready",
            lambda: (
                self.kubectl(
                    "get",
                    "node",
                    NODE_NAME,
                    "-o",
                    'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
                    check=False,
                ).stdout.strip()
                == "True"
            ),
            90,
            proc,
            interval=0.3,
        )

    # ---- images ----------------------------------------------------------------------------

    def load_image(
        self,
        source: Path,
        ref: str,
        *,
        entrypoint: list[str] | None = None,
        cmd: list[str] | None = None,
        push: bool = True,
    ) -> str:
        """rootfs dir / static binary / OCI layout -> image ``ref`` in the node's containerd.

        With ``push`` (default) the same image also goes to the local registry, as
        `registry_ref(ref)`, so code that reads image configs from a registry sees it too.
        """
        if not self.running(TIER_NODE):
            raise ClusterError("load_image needs the node tier")
        layout = images.load_image(
            self.state_dir, Path(source), ref, entrypoint=entrypoint, cmd=cmd
        )
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
        """Build ``ref`` like `load_image` and push it to the local registry.

        Returns the registry reference (``127.0.0.1:PORT/repo:tag``), pullable by the node.
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

    @property
    def ca_path(self) -> Path:
        """The cluster CA certificate (trusted by the apiserver for clients and webhooks)."""
        return self.pki_dir / "ca.crt"

    def serving_cert(self, basename: str, hosts: tuple[str, ...]) -> pki.CertPair:
        """A serving certificate from the cluster CA, e.g. for a webhook on 127.0.0.1.

        Pair it with `ca_path` as the webhook's caBundle.
        """
        return pki.serving_cert(pki.CertificateAuthority(self.pki_dir), basename, hosts)

    # ---- users -----------------------------------------------------------------------------

    def token_kubeconfig(
        self, namespace: str, serviceaccount: str, *, expiration_seconds: int = 86400
    ) -> Path:
        """A kubeconfig that acts as ``namespace/serviceaccount`` (created if missing).

        The operator's tests run with the operator's RBAC, not as admin: bind roles to the
        service account, then use this kubeconfig.
        """
        with self.api_client() as api:
            core = client.CoreV1Api(api)
            with contextlib.suppress(client.ApiException):
                core.create_namespace(
                    client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
                )
            with contextlib.suppress(client.ApiException):
                core.create_namespaced_service_account(
                    namespace,
                    client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=serviceaccount)),
                )
            tr = core.create_namespaced_service_account_token(
                serviceaccount,
                namespace,
                client.AuthenticationV1TokenRequest(
                    spec=client.V1TokenRequestSpec(
                        audiences=[], expiration_seconds=expiration_seconds
                    )
                ),
            )
        if tr.status is None:
            raise ClusterError(f"no token issued for {namespace}/{serviceaccount}")
        d = self.state_dir / "users"
        d.mkdir(exist_ok=True)
        return pki.write_kubeconfig(
            d / f"{namespace}.{serviceaccount}.kubeconfig",
            self.server,
            self.pki_dir / "ca.crt",
            user=f"system:serviceaccount:{namespace}:{serviceaccount}",
            token=tr.status.token,
            namespace=namespace,
        )

    # ---- teardown --------------------------------------------------------------------------

    def down(self, *, keep_logs: bool = False) -> None:
        """Stop what `up` started (by PID) and remove mounts, bridge, cgroups and state.

        Harmless when nothing runs. With ``keep_logs`` the logs dir survives.
        """
        st = self.state
        procs = {p.name: p for p in self._processes()}
        hostpath_dirs = self._hostpath_pv_dirs() if "kube-apiserver" in procs else []
        netns: list[str] = []
        ids: list[str] = []
        if "kubelet" in procs:
            procs.pop("kubelet").stop(timeout=10)
        if "containerd" in procs:
            if procs["containerd"].alive():
                netns = node.sandbox_netns_paths(self.state_dir)
                ids = node.container_ids(self.state_dir)
                node.kill_workloads(self.state_dir)
            procs.pop("containerd").stop(timeout=10)
        if TIER_NODE in st.tiers or (self.state_dir / "containerd").exists():
            node.kill_leftovers(self.state_dir)
            node.remove_netns(netns)
            node.unmount_under([str(self.state_dir)])
            if st.cgroup_root:
                node.remove_cgroup_root(st.cgroup_root)
            if st.bridge:
                node.delete_bridge(st.bridge)
            if st.network:
                node.remove_cni_cache(st.network, ids)
            node.remove_container_log_links(self.state_dir / "pod-logs")
            if st.ip_forward in ("0", "1"):
                with contextlib.suppress(OSError):
                    Path("/proc/sys/net/ipv4/ip_forward").write_text(st.ip_forward)
        names = ("apiserver-forward", "kube-scheduler", "kube-controller-manager", "kube-apiserver")
        for name in (*names, "registry"):
            if name in procs:
                procs.pop(name).stop(timeout=10)
        for p in procs.values():  # etcd last: the apiserver needs it to shut down cleanly
            p.stop(timeout=10)
        for d in hostpath_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._remove_state(keep_logs=keep_logs)
        self.state = State(name=st.name, version=st.version)

    def _hostpath_pv_dirs(self) -> list[Path]:
        """Directories the hostpath provisioner made for this cluster's PVs."""
        out = self.kubectl(
            "get",
            "pv",
            "-o",
            "jsonpath={range .items[*]}{.spec.hostPath.path}{'\\n'}{end}",
            check=False,
            timeout=10,
        ).stdout
        dirs = []
        for line in out.split():
            p = Path(line)
            if p.parent == HOSTPATH_PV_DIR:
                dirs.append(p)
        return dirs

    def _remove_state(self, *, keep_logs: bool) -> None:
        if not self.state_dir.exists():
            return
        node.unmount_under([str(self.state_dir)])
        for entry in self.state_dir.iterdir():
            if keep_logs and entry == self.logs_dir:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if not keep_logs or self.logs_dir.parent != self.state_dir:
            with contextlib.suppress(OSError):
                self.state_dir.rmdir()

    # ---- reporting -------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Status for humans and benchmarks: version, tiers, ports, PIDs, timings."""
        return {
            "version": self.state.version,
            "state_dir": str(self.state_dir),
            "kubeconfig": str(self.kubeconfig),
            "tiers": self.state.tiers,
            "ports": self.state.ports,
            "processes": {
                p.name: {"pid": p.pid, "alive": p.alive(), "log": p.log} for p in self._processes()
            },
            "node_ip": self.state.node_ip,
            "timings": {k: round(v, 2) for k, v in self.state.timings.items()},
            "binaries": [str(Path(str(self.bin_dir)) / b) for b in BINARIES],
        }


def _wait_healthz(name: str, port: int, timeout: float, proc: components.Process | None) -> None:
    """A control-plane component serves `ok` on its HTTPS /healthz (self-signed certificate)."""
    components.wait_until(
        f"{name} /healthz",
        lambda: components.http_ok(
            f"https://127.0.0.1:{port}/healthz",
            context=components.insecure_context(),
            expect="ok",
        ),
        timeout,
        proc,
    )
