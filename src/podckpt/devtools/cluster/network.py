"""A node's network: its own bridge, pod subnet and node IP, and a CNI conflist for them.

Each node gets a bridge ``pck-<hash>`` with a free ``10.244.N.0/24``; the bridge's gateway
address is the node IP. The kubelet refuses loopback as its node IP and the host's own address
is not ours to use; a bridge address is local, so the apiserver reaches the kubelet there, and
so do the pods of every node (pods of two nodes reach each other through the host's routing
between the two bridges: nothing is added to the host's iptables, so this relies on its
FORWARD policy accepting, which it does when nothing like Docker changed it).

The CNI conflist is bridge + host-local with its state in the node's dir; no masquerade and no
port maps. libcni also caches results under the fixed /var/lib/cni, named after the network
(``podckpt-<bridge>``, one per node) and the sandbox ID: `remove_cni_cache` removes exactly
those.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import subprocess
from pathlib import Path

from podckpt.devtools.cluster.errors import ClusterError
from podckpt.devtools.cluster.host import unmount_under

CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")


def cni_bin_dir() -> Path:
    """Where Debian's containernetworking-plugins put the bridge/host-local/loopback plugins."""
    for d in CNI_BIN_DIRS:
        if (Path(d) / "bridge").exists():
            return Path(d)
    raise ClusterError(
        "CNI plugins are missing; run hack/setup.sh (Debian package containernetworking-plugins)"
    )


def bridge_name(key: str) -> str:
    """A bridge name for ``key`` (state dir, plus the node for all but the first node)
    within Linux's 15-character limit."""
    return "pck-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def pick_pod_subnet(
    key: str, taken: list[ipaddress.IPv4Network] | None = None
) -> ipaddress.IPv4Network:
    """A /24 in 10.244.0.0/16 that no route on the host uses yet, nor ``taken`` (nodes
    planned but not created yet); stable per key."""
    used: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = list(taken or [])
    out = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=False
    ).stdout
    for line in out.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("local", "broadcast"):
            first = line.split()[1]
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(first, strict=False))
    start = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 250
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
    the host's iptables, and pods only need to reach each other and the nodes."""
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


def remove_netns(paths: list[str]) -> None:
    """Unmount and delete our sandboxes' network namespaces (their veths go with them)."""
    unmount_under(paths)
    for p in paths:
        with contextlib.suppress(OSError):
            Path(p).unlink()


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
