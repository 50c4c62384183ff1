"""A node's container runtime: containerd (Debian's 1.6) confined to the node's state dir.

Each node's containerd has its own root (images, snapshots: they survive a node restart, as
/var/lib/containerd does a reboot), state and runc root (as /run/containerd: gone after a node
restart, see `node.reboot_cleanup`), socket, `restrict_oom_score_adj` (no CAP_SYS_RESOURCE in
this VM: without it every sandbox fails with "can't get final child's PID from pipe"), our
pause image, and the local registry as an HTTP mirror.

The processes of a node's containers are found through containerd itself (tasks), its runc
root and the shims whose ``-address`` is its socket: ours by construction, never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

from podckpt.devtools.cluster import components
from podckpt.devtools.cluster.components import Process, proc_start_time
from podckpt.devtools.cluster.errors import ClusterError
from podckpt.devtools.cluster.network import cni_bin_dir
from podckpt.devtools.cluster.state import ClusterBase, NodeState


def config(node_dir: Path, sandbox_image: str, registry: str | None, cni_conf_dir: Path) -> Path:
    """containerd 1.6 config (version 2) confined to ``node_dir``."""
    d = node_dir / "containerd"
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
        f'  Root = "{runc_root(node_dir)}"',
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


def socket(node_dir: Path) -> Path:
    """The node's containerd socket (also what `ctr --address` needs)."""
    return node_dir / "containerd" / "containerd.sock"


def runc_root(node_dir: Path) -> Path:
    """runc's state of the node's containers (what /run/containerd/runc is on a machine)."""
    return node_dir / "containerd" / "runc"


def volatile_dirs(node_dir: Path) -> list[Path]:
    """What lives on tmpfs (/run) on a real machine and so does not survive its restart."""
    return [node_dir / "containerd" / "state", runc_root(node_dir)]


def start(c: ClusterBase, node: NodeState, sandbox_image: str) -> Process:
    """Start the node's containerd and wait until it answers."""
    cfg = config(node.path, sandbox_image, c.registry, node.path / "cni" / "net.d")
    proc = c.started(
        components.start(
            node.process_name("containerd"), ["containerd", "--config", str(cfg)], c.logs_dir
        )
    )
    components.wait_until(
        f"containerd of {node.name}",
        lambda: (
            subprocess.run(
                ["ctr", "--address", str(socket(node.path)), "version"],
                capture_output=True,
                check=False,
                timeout=5,
            ).returncode
            == 0
        ),
        30,
        proc,
    )
    return proc


def ctr(node_dir: Path, *args: str, check: bool = True, timeout: float = 120) -> str:
    """Run `ctr` against this node's containerd in the CRI namespace."""
    argv = ["ctr", "--address", str(socket(node_dir)), "--namespace", "k8s.io", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise ClusterError(f"`ctr {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def sandbox_netns_paths(node_dir: Path) -> list[str]:
    """Network-namespace bind mounts of our pod sandboxes, read from containerd's specs."""
    paths = []
    with contextlib.suppress(ClusterError, subprocess.TimeoutExpired, OSError):
        ids = ctr(node_dir, "containers", "ls", "-q", timeout=20).split()
        for cid in ids:
            with contextlib.suppress(ClusterError, ValueError, subprocess.TimeoutExpired):
                info = json.loads(ctr(node_dir, "containers", "info", cid, timeout=20))
                spec = info.get("Spec") or {}
                for ns in (spec.get("linux") or {}).get("namespaces") or []:
                    if ns.get("type") == "network" and ns.get("path", "").startswith(
                        ("/var/run/netns/", "/run/netns/")
                    ):
                        paths.append(ns["path"])
    return sorted(set(paths))


def container_ids(node_dir: Path) -> list[str]:
    """IDs of every container (sandboxes included) our containerd knows."""
    with contextlib.suppress(ClusterError, subprocess.TimeoutExpired, OSError):
        return ctr(node_dir, "containers", "ls", "-q", timeout=20).split()
    return []


def kill_workloads(node_dir: Path) -> None:
    """Kill and delete every task and container of our containerd (kubelet already gone)."""
    with contextlib.suppress(ClusterError, subprocess.TimeoutExpired, OSError):
        for line in ctr(node_dir, "tasks", "ls", timeout=20).splitlines()[1:]:
            cid = line.split()[0]
            ctr(node_dir, "tasks", "kill", "--all", "--signal", "SIGKILL", cid, check=False)
        time.sleep(0.3)
        for line in ctr(node_dir, "tasks", "ls", timeout=20).splitlines()[1:]:
            ctr(node_dir, "tasks", "delete", "--force", line.split()[0], check=False)
        for cid in ctr(node_dir, "containers", "ls", "-q", timeout=20).split():
            ctr(node_dir, "containers", "delete", cid, check=False)


def shim_pids(node_dir: Path) -> list[int]:
    """containerd-shim-runc-v2 processes whose ``-address`` is this node's socket."""
    sock = str(socket(node_dir)).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if (
                argv[0].endswith(b"containerd-shim-runc-v2")
                and sock in argv
                and proc_start_time(int(entry.name)) is not None
            ):
                pids.append(int(entry.name))
    return pids


def kill_leftovers(node_dir: Path) -> None:
    """After containerd stopped: runc containers in our runc root, and shims whose
    `-address` is our socket. Both are ours by construction, never matched by name alone."""
    root = runc_root(node_dir)
    if root.is_dir():
        for ns_root in [root, *[p for p in root.iterdir() if p.is_dir()]]:
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
    for pid in shim_pids(node_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
