"""The control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and the
forwarder that lets pods reach the apiserver.

All of it listens on 127.0.0.1 (free ports), so several clusters can run at once. Choices that
differ from a production control plane, each for a reason given where it is made:
``--endpoint-reconciler-type=none`` and ``--enable-aggregator-routing`` (no kube-proxy),
one identity for all controllers (start-up time), no leader election (one instance), and
short node timeouts (`state.Timeouts`: a test must see a dead node's pods evicted in under a
minute; production waits 50 s + 300 s).
"""

from __future__ import annotations

import sys
from pathlib import Path

from podckpt.devtools.cluster import components
from podckpt.devtools.cluster.components import Process
from podckpt.devtools.cluster.state import SERVICE_CIDR, STORAGE_CLASS, ClusterBase


def start_etcd(c: ClusterBase) -> None:
    """etcd with its data in the state dir; waits for /health."""
    p = c.state.ports
    proc = c.started(
        components.start(
            "etcd",
            [
                "etcd",
                "--name=podckpt",
                f"--data-dir={c.state_dir / 'etcd'}",
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
            c.logs_dir,
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


def start_apiserver(c: ClusterBase, bin_dir: Path) -> None:
    """kube-apiserver on 127.0.0.1; waits for /readyz."""
    p = c.state.ports
    k = c.pki_dir
    toleration = str(c.state.timeouts.toleration_s)
    proc = c.started(
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
                # The DefaultTolerationSeconds admission plugin gives every pod without
                # tolerations of its own these (production: 300 s each).
                f"--default-not-ready-toleration-seconds={toleration}",
                f"--default-unreachable-toleration-seconds={toleration}",
                "--profiling=false",
                "--v=1",
            ],
            c.logs_dir,
        )
    )
    ctx = components.client_context(k / "ca.crt", k / "admin.crt", k / "admin.key")
    components.wait_until(
        "kube-apiserver /readyz",
        lambda: components.http_ok(f"{c.server}/readyz", context=ctx, expect="ok"),
        60,
        proc,
    )


def start_controller_manager(c: ClusterBase, bin_dir: Path) -> None:
    """kube-controller-manager with the hostpath provisioner; waits for /healthz."""
    p = c.state.ports
    k = c.pki_dir
    kc = c.state_dir / "controller-manager.kubeconfig"
    proc = c.started(
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
                # A node whose kubelet has not renewed its lease for this long is NotReady
                # and tainted (production: 50 s); the kubelets renew every 5 s (node.py).
                f"--node-monitor-grace-period={c.state.timeouts.node_monitor_grace_s}s",
                "--cluster-name=podckpt",
                "--profiling=false",
                "--v=1",
            ],
            c.logs_dir,
        )
    )
    wait_healthz("kube-controller-manager", p["controller-manager"], 60, proc)


def bootstrap_objects(c: ClusterBase) -> None:
    """Default StorageClass, apiserver->kubelet RBAC; then wait for the default
    ServiceAccount (pods cannot be created before the controller-manager made it).

    The StorageClass is the in-tree hostpath provisioner's: each volume is a new directory
    under /tmp/hostpath_pv, and its PersistentVolume has no node affinity. On one machine
    every node sees that directory, so it stands for network-attached storage: a volume
    written by a pod on one node mounts on any other (docs/cluster.md).
    """
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
        lambda: c.kubectl("apply", "-f", "-", input=manifest, check=False).returncode == 0,
        30,
    )
    components.wait_until(
        "ServiceAccount default/default",
        lambda: c.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
        30,
        c.process("kube-controller-manager"),
        interval=0.2,
    )


def start_scheduler(c: ClusterBase, bin_dir: Path) -> Process:
    """kube-scheduler; not waited for here (its /healthz comes while the node starts)."""
    kc = c.state_dir / "scheduler.kubeconfig"
    return c.started(
        components.start(
            "kube-scheduler",
            [
                str(bin_dir / "kube-scheduler"),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={c.state.ports['scheduler']}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
            c.logs_dir,
        )
    )


def start_apiserver_forward(c: ClusterBase) -> None:
    """The apiserver at https://<first node's IP>:443 for pods (in-cluster operators): see
    `podckpt.devtools.cluster.forward`. 443 because kopf's service-account login uses
    `https://kubernetes.default.svc` whatever the environment says. Pods of every node reach
    it (the address is the host's); it belongs to the control plane, so it keeps serving
    when the first node is stopped or killed."""
    port = str(c.state.ports["apiserver"])
    argv = [sys.executable, "-m", "podckpt.devtools.cluster.forward"]
    argv += [c.state.node_ip, "443", "127.0.0.1", port]
    proc = c.started(components.start("apiserver-forward", argv, c.logs_dir))
    components.wait_until(
        "apiserver forward", lambda: components.tcp_open(c.state.node_ip, 443), 10, proc
    )


def wait_healthz(name: str, port: int, timeout: float, proc: Process | None) -> None:
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
