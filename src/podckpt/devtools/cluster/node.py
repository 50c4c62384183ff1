"""The node: CNI bridge, containerd and kubelet, each confined to the cluster's state dir.

Choices, each forced by this machine (TEST-CLUSTER.md) or by "leave the host as found":
- The node IP is the gateway address of a bridge we create. The kubelet refuses loopback as
  its node IP and the host's own address is not ours to use; the bridge address is local, so
  the apiserver reaches the kubelet there, and so do pods.
- containerd gets its own root, state, socket and runc root, `restrict_oom_score_adj` (no
  CAP_SYS_RESOURCE in this VM) and the pause image we build, so no registry is needed.
- The kubelet uses cgroupfs under its own cgroup root (`/podckpt-<name>`), `failCgroupV1:
  false` (cgroup v1 hosts), `failSwapOn: false`, its own root dir and pod-log dir, and
  `seccompDefault: false` so `Unconfined` and added capabilities (CHECKPOINT_RESTORE,
  SYS_PTRACE, SYS_ADMIN...) are simply not forbidden for checkpointed containers.
- Teardown does not rely on the kubelet: it kills the containers through containerd, then
  removes whatever is left that is provably ours (runc root, shims bound to our socket,
  network namespaces of our sandboxes, mounts under the state dir, our cgroups, the bridge).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import subprocess
import time
from pathlib import Path

import yaml

from podckpt.devtools.cluster.components import proc_start_time
from podckpt.devtools.cluster.errors import ClusterError

CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
CGROUP_V1 = Path("/sys/fs/cgroup")


def cni_bin_dir() -> Path:
    """Where Debian's containernetworking-plugins put the bridge/host-local/loopback plugins."""
    for d in CNI_BIN_DIRS:
        if (Path(d) / "bridge").exists():
            return Path(d)
    raise ClusterError(
        "CNI plugins are missing; run hack/setup.sh (Debian package containernetworking-plugins)"
    )


def bridge_name(cluster_name: str) -> str:
    """A per-cluster bridge name within Linux's 15-character limit."""
    return "pck-" + hashlib.sha256(cluster_name.encode()).hexdigest()[:8]


def pick_pod_subnet(cluster_name: str) -> ipaddress.IPv4Network:
    """A /24 in 10.244.0.0/16 that no route on the host uses yet (stable per cluster name)."""
    used = []
    out = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=False
    ).stdout
    for line in out.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("local", "broadcast"):
            first = line.split()[1]
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(first, strict=False))
    start = int(hashlib.sha256(cluster_name.encode()).hexdigest(), 16) % 250
    for i in range(250):
        net = ipaddress.IPv4Network(f"10.244.{(start + i) % 250 + 1}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise ClusterError("no free /24 in 10.244.0.0/16 for the pod network")


def create_bridge(name: str, gateway: str, prefixlen: int) -> None:
    """Create the pod bridge with the node IP (idempotent)."""
    if not Path(f"/sys/class/net/{name}").exists():
        _ip("link", "add", "name", name, "type", "bridge")
    existing = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", name], capture_output=True, text=True, check=False
    ).stdout
    if f" {gateway}/" not in existing:
        _ip("addr", "add", f"{gateway}/{prefixlen}", "dev", name)
    _ip("link", "set", name, "up")


def delete_bridge(name: str) -> None:
    """Remove the pod bridge if it exists."""
    if Path(f"/sys/class/net/{name}").exists():
        subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")


def write_cni_config(
    conf_dir: Path, ipam_dir: Path, network: str, bridge: str, subnet: ipaddress.IPv4Network
) -> None:
    """A bridge + host-local conflist. No masquerade and no port maps: nothing is written to
    the host's iptables, and pods only need to reach each other and the node."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    ipam_dir.mkdir(parents=True, exist_ok=True)
    gateway = str(next(subnet.hosts()))
    conflist = {
        "cniVersion": "0.4.0",
        "name": network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(ipam_dir),
                    "ranges": [[{"subnet": str(subnet), "gateway": gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "loopback"},
        ],
    }
    (conf_dir / "10-podckpt.conflist").write_text(json.dumps(conflist, indent=2))


def containerd_config(
    state: Path, sandbox_image: str, registry: str | None, cni_conf_dir: Path
) -> Path:
    """containerd 1.6 config (version 2) confined to ``state``."""
    d = state / "containerd"
    d.mkdir(parents=True, exist_ok=True)
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    lines = [
        "version = 2",
        f'root = "{d / "root"}"',
        f'state = "{d / "state"}"',
        'disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", '
        '"io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", '
        '"io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]',
        "[grpc]",
        f'  address = "{d / "containerd.sock"}"',
        "[ttrpc]",
        f'  address = "{d / "containerd.sock.ttrpc"}"',
        '[plugins."io.containerd.internal.v1.opt"]',
        f'  path = "{d / "opt"}"',
        f"[{cri}]",
        f'  sandbox_image = "{sandbox_image}"',
        "  restrict_oom_score_adj = true",
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        "  enable_selinux = false",
        "  netns_mounts_under_state_dir = true",
        f"[{cri}.containerd]",
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        f"[{cri}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{cri}.containerd.runtimes.runc.options]",
        "  SystemdCgroup = false",
        f'  Root = "{d / "runc"}"',
        f"[{cri}.cni]",
        f'  bin_dir = "{cni_bin_dir()}"',
        f'  conf_dir = "{cni_conf_dir}"',
        "  max_conf_num = 1",
    ]
    if registry:
        lines += [
            f'[{cri}.registry.mirrors."{registry}"]',
            f'  endpoint = ["http://{registry}"]',
        ]
    path = d / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def containerd_socket(state: Path) -> Path:
    """The node's containerd socket (also what `ctr --address` needs)."""
    return state / "containerd" / "containerd.sock"


def ctr(state: Path, *args: str, check: bool = True, timeout: float = 120) -> str:
    """Run `ctr` against this node's containerd in the CRI namespace."""
    argv = ["ctr", "--address", str(containerd_socket(state)), "--namespace", "k8s.io", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise ClusterError(f"`ctr {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def cgroup_hierarchies() -> list[Path]:
    """Mounted cgroup hierarchies (v1 controllers, and the v2 'unified' mount if present)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split(" - ")
        if len(parts) == 2 and parts[1].split()[0] in ("cgroup", "cgroup2"):
            out.append(Path(line.split()[4]))
    return out


def create_cgroup_root(cgroup_root: str) -> None:
    """The kubelet requires its `cgroupRoot` to exist in every hierarchy."""
    for h in cgroup_hierarchies():
        d = h / cgroup_root.lstrip("/")
        d.mkdir(exist_ok=True)
        if h.name == "cpuset":
            # A new cpuset cgroup is unusable until it has cpus and mems.
            for f in ("cpuset.cpus", "cpuset.mems"):
                if (d / f).exists() and not (d / f).read_text().strip():
                    (d / f).write_text((h / f).read_text())


def remove_cgroup_root(cgroup_root: str) -> None:
    """rmdir our cgroup subtree, deepest first, in every hierarchy (kills leftovers first)."""
    for h in cgroup_hierarchies():
        top = h / cgroup_root.lstrip("/")
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, top]:
            procs = d / "cgroup.procs"
            with contextlib.suppress(OSError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), 9)
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


def kubelet_config(
    state: Path,
    *,
    node_ip: str,
    port: int,
    healthz_port: int,
    ca: Path,
    serving_cert: Path,
    serving_key: Path,
    cgroup_root: str,
) -> Path:
    """KubeletConfiguration for this machine (see the module docstring for each choice)."""
    cfg = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_ip,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(serving_cert),
        "tlsPrivateKeyFile": str(serving_key),
        "containerRuntimeEndpoint": f"unix://{containerd_socket(state)}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "cgroupsPerQOS": True,
        "failCgroupV1": False,
        "failSwapOn": False,
        "seccompDefault": False,
        "podLogsDir": str(state / "pod-logs"),
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
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "maxPods": 110,
        "shutdownGracePeriod": "0s",
    }
    path = state / "kubelet-config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def sandbox_netns_paths(state: Path) -> list[str]:
    """Network-namespace bind mounts of our pod sandboxes, read from containerd's specs."""
    paths = []
    with contextlib.suppress(ClusterError, subprocess.TimeoutExpired, OSError):
        ids = ctr(state, "containers", "ls", "-q", timeout=20).split()
        for cid in ids:
            with contextlib.suppress(ClusterError, ValueError, subprocess.TimeoutExpired):
                info = json.loads(ctr(state, "containers", "info", cid, timeout=20))
                spec = info.get("Spec") or {}
                for ns in (spec.get("linux") or {}).get("namespaces") or []:
                    if ns.get("type") == "network" and ns.get("path", "").startswith(
                        ("/var/run/netns/", "/run/netns/")
                    ):
                        paths.append(ns["path"])
    return sorted(set(paths))


def kill_workloads(state: Path) -> None:
    """Kill and delete every task and container of our containerd (kubelet already gone)."""
    with contextlib.suppress(ClusterError, subprocess.TimeoutExpired, OSError):
        for line in ctr(state, "tasks", "ls", timeout=20).splitlines()[1:]:
            cid = line.split()[0]
            ctr(state, "tasks", "kill", "--all", "--signal", "SIGKILL", cid, check=False)
        time.sleep(0.3)
        for line in ctr(state, "tasks", "ls", timeout=20).splitlines()[1:]:
            ctr(state, "tasks", "delete", "--force", line.split()[0], check=False)
        for cid in ctr(state, "containers", "ls", "-q", timeout=20).split():
            ctr(state, "containers", "delete", cid, check=False)


def kill_leftovers(state: Path) -> None:
    """After containerd stopped: runc containers in our runc root, and shims whose
    `-address` is our socket. Both are ours by construction, never matched by name alone."""
    runc_root = state / "containerd" / "runc"
    if runc_root.is_dir():
        for ns_root in [runc_root, *[p for p in runc_root.iterdir() if p.is_dir()]]:
            out = subprocess.run(
                ["runc", "--root", str(ns_root), "list", "-q"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            for cid in out.split():
                subprocess.run(
                    ["runc", "--root", str(ns_root), "delete", "--force", cid],
                    capture_output=True,
                    check=False,
                )
    sock = str(containerd_socket(state))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].endswith(b"containerd-shim-runc-v2")
            and sock.encode() in argv
            and proc_start_time(int(entry.name)) is not None
        ):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), 9)


def unmount_under(prefixes: list[str]) -> None:
    """Unmount every mount at or below ``prefixes`` (deepest first, lazily if busy)."""
    for _ in range(3):
        points = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mp = line.split()[4].replace("\\040", " ")
            if any(mp == p or mp.startswith(p.rstrip("/") + "/") for p in prefixes):
                points.append(mp)
        if not points:
            return
        for mp in sorted(set(points), key=lambda p: -len(p)):
            r = subprocess.run(["umount", mp], capture_output=True, check=False)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True, check=False)


def remove_netns(paths: list[str]) -> None:
    """Unmount and delete our sandboxes' network namespaces (their veths go with them)."""
    unmount_under(paths)
    for p in paths:
        with contextlib.suppress(OSError):
            Path(p).unlink()


def remove_container_log_links(pod_logs_dir: Path) -> None:
    """The kubelet also links logs from the fixed /var/log/containers: remove ours."""
    d = Path("/var/log/containers")
    if not d.is_dir():
        return
    for link in d.iterdir():
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(str(pod_logs_dir)):
                link.unlink()


def container_ids(state: Path) -> list[str]:
    """IDs of every container (sandboxes included) our containerd knows."""
    with contextlib.suppress(ClusterError, subprocess.TimeoutExpired, OSError):
        return ctr(state, "containers", "ls", "-q", timeout=20).split()
    return []


def remove_cni_cache(network: str, sandbox_ids: list[str]) -> None:
    """libcni caches results under /var/lib/cni, named after the network (ours, and
    containerd's `cni-loopback`) and the sandbox ID: remove those of our network and sandboxes."""
    ids = set(sandbox_ids)
    for d in (Path("/var/lib/cni/results"), Path("/var/lib/cni/cache/results")):
        if not d.is_dir():
            continue
        for f in d.iterdir():
            ours = f.name.startswith(f"{network}-") or any(f"-{i}-" in f.name for i in ids)
            if ours:
                with contextlib.suppress(OSError):
                    f.unlink()
