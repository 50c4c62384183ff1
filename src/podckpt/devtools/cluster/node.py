"""A node's life: added, started, stopped gracefully, killed, started again, removed.

A node is a kubelet, a containerd and a logind stand-in, with its own state directory
(``<state>/nodes/<name>/``: containerd root and state, kubelet root dir, pod logs, CNI state),
bridge and node IP, pod subnet, cgroup root and ports. Several nodes share the machine, the
control plane and the local registry (see `network`, `containerd` and `kubelet` for what each
part keeps apart, and what the kubelet insists on sharing).

- `stop` is a graceful node shutdown as the kubelet knows it: logind announces
  PrepareForShutdown, the kubelet stops its pods within its shutdownGracePeriod (they end
  Failed with reason Terminated) and releases its inhibitor lock; then the machine "powers
  off": kubelet, containerd and logind get SIGTERM.
- `kill` is a machine that dies: SIGKILL to the kubelet, containerd, logind, the shims bound
  to the node's containerd socket and every process in the node's cgroup tree, all of them
  found before the first signal; nothing gets a SIGTERM. The node's mounts and files stay
  as a dead machine's disk would.
- `start` brings a stopped or killed node back as a reboot would: what lives on tmpfs on a
  real machine (containerd's state and runc root, mounts, network namespaces, cgroups, CNI
  IP allocations) is cleared; containerd's root (images) and the kubelet's root dir stay.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from podckpt.devtools.cluster import components, containerd, host, images, kubelet, network
from podckpt.devtools.cluster.components import Process
from podckpt.devtools.cluster.errors import ClusterError
from podckpt.devtools.cluster.state import (
    NODE_KILLED,
    NODE_STOPPED,
    NODE_UP,
    ClusterBase,
    NodeState,
    node_name,
)

COMPONENTS = ("kubelet", "containerd", "logind")


def plan(c: ClusterBase, index: int) -> NodeState:
    """A new node's names, addresses, ports and directories (nothing is created yet)."""
    name = node_name(index)
    # The first node keeps the one-node cluster's bridge and subnet (keyed by state dir).
    key = c.state_dir.as_posix() if index == 1 else f"{c.state_dir.as_posix()}#{name}"
    taken = [ipaddress.IPv4Network(n.pod_subnet) for n in c.state.nodes]
    subnet = network.pick_pod_subnet(key, taken)
    bridge = network.bridge_name(key)
    return NodeState(
        name=name,
        index=index,
        dir=str(c.state_dir / "nodes" / name),
        ip=str(next(subnet.hosts())),
        bridge=bridge,
        network=f"podckpt-{bridge}",
        pod_subnet=str(subnet),
        cgroup_root=f"/podckpt-{bridge}",
        ports={"kubelet": components.free_port(), "kubelet-healthz": components.free_port()},
    )


def setup_network(node: NodeState) -> None:
    """The node's bridge (its IP) and CNI config."""
    subnet = ipaddress.IPv4Network(node.pod_subnet)
    node.path.mkdir(parents=True, exist_ok=True)
    network.create_bridge(node.bridge, node.ip, subnet.prefixlen)
    cni = node.path / "cni"
    network.write_cni_config(cni / "net.d", cni / "ipam", node.network, node.bridge, subnet)


def launch(c: ClusterBase, node: NodeState, bin_dir: Path) -> None:
    """Start logind, containerd (with every recorded image) and the kubelet; the caller waits
    for Ready (`kubelet.wait_ready`), so that several nodes come up in parallel."""
    setup_network(node)
    _start_logind(c, node)
    containerd.start(c, node, images.PAUSE_REF)
    images.import_missing(c, node)
    host.create_cgroup_root(node.cgroup_root)
    kubelet.start(c, node, bin_dir)
    node.status = NODE_UP
    c.save()


def _start_logind(c: ClusterBase, node: NodeState) -> Process:
    sock = node.path / "logind.sock"
    argv = [sys.executable, "-m", "podckpt.devtools.cluster.logind", str(sock)]
    argv += [str(_logind_status_file(node)), str(c.state.timeouts.shutdown_grace_s + 30)]
    _logind_status_file(node).unlink(missing_ok=True)
    proc = c.started(components.start(node.process_name("logind"), argv, c.logs_dir))
    components.wait_until(
        f"logind of {node.name}", lambda: _logind_status(node) is not None, 10, proc
    )
    return proc


def _logind_status_file(node: NodeState) -> Path:
    return node.path / "logind.json"


def _logind_status(node: NodeState) -> dict[str, object] | None:
    try:
        status: dict[str, object] = json.loads(_logind_status_file(node).read_text())
    except (OSError, ValueError):
        return None
    return status


def node_processes(c: ClusterBase, node: NodeState) -> list[Process]:
    """The node's recorded processes that are still alive."""
    procs = [c.process(node.process_name(x)) for x in COMPONENTS]
    return [p for p in procs if p is not None and p.alive()]


def stop(c: ClusterBase, node: NodeState) -> dict[str, float]:
    """Graceful node shutdown (see the module docstring); returns how long each step took.

    Fails (and leaves the node running) when the kubelet holds no inhibitor lock, i.e. its
    graceful shutdown is not armed: stopping then would be a kill, not a shutdown.
    """
    if node.status != NODE_UP:
        raise ClusterError(f"node {node.name} is {node.status}, not up")
    logind = c.process(node.process_name("logind"))
    status = _logind_status(node)
    if logind is None or not logind.alive() or not status or not status.get("inhibitors"):
        raise ClusterError(
            f"the kubelet of {node.name} holds no shutdown inhibitor lock (graceful node "
            f"shutdown is not armed; see {c.logs_dir / (node.process_name('kubelet') + '.log')})"
        )
    t0 = time.monotonic()
    os.kill(logind.pid, signal.SIGUSR1)
    grace = c.state.timeouts.shutdown_grace_s
    components.wait_until(
        f"the kubelet of {node.name} to finish its graceful shutdown",
        lambda: not (_logind_status(node) or {}).get("inhibitors"),
        grace + 30,
        c.process(node.process_name("kubelet")),
        interval=0.2,
    )
    took = {"kubelet_shutdown_s": time.monotonic() - t0}
    # The kubelet reports its pods' final status (Failed) asynchronously: let it, as the
    # seconds between logind's last inhibitor and the power-off would.
    with contextlib.suppress(ClusterError):
        components.wait_until(
            f"the pods of {node.name} to be reported terminated",
            lambda: not _active_pods(c, node.name),
            15,
            interval=0.3,
        )
    for proc in [p for p in (c.process(node.process_name(x)) for x in COMPONENTS) if p]:
        proc.stop(timeout=10)
        c.forget(proc.name)
    # What a machine's final SIGTERM/SIGKILL round would get: nothing, normally.
    host.kill_cgroup(node.cgroup_root)
    containerd.kill_leftovers(node.path)
    node.status = NODE_STOPPED
    c.save()
    took["total_s"] = time.monotonic() - t0
    return took


def _active_pods(c: ClusterBase, name: str) -> list[str]:
    """Pods bound to node ``name`` whose phase is neither Failed nor Succeeded."""
    out = c.kubectl(
        "get", "pods", "-A", "--field-selector", f"spec.nodeName={name}", "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.phase}{'\\n'}{end}",
        timeout=20,
    ).stdout  # fmt: skip
    return [
        line for line in out.splitlines() if line.split()[-1:] not in (["Failed"], ["Succeeded"])
    ]


def kill(c: ClusterBase, node: NodeState) -> list[int]:
    """SIGKILL everything of the node at once, no SIGTERM to anything; returns the PIDs."""
    if node.status != NODE_UP:
        raise ClusterError(f"node {node.name} is {node.status}, not up")
    procs = [c.process(node.process_name(x)) for x in COMPONENTS]
    daemons = [p.pid for p in procs if p is not None and p.alive()]
    pids = daemons + containerd.shim_pids(node.path) + sorted(host.cgroup_pids(node.cgroup_root))
    for pid in pids:  # the kubelet first: it must not see its containers die
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    host.kill_cgroup(node.cgroup_root)  # anything forked while we were killing
    for p in procs:
        if p is not None:
            p.wait_dead()
            c.forget(p.name)
    node.status = NODE_KILLED
    c.save()
    return pids


def start(c: ClusterBase, node: NodeState, bin_dir: Path, *, wait: bool = True) -> None:
    """Bring a stopped or killed node back, as after a reboot (see the module docstring)."""
    if node.status == NODE_UP and node_processes(c, node):
        raise ClusterError(f"node {node.name} is up already")
    reboot_cleanup(node)
    launch(c, node, bin_dir)
    if wait:
        kubelet.wait_ready(c, [node])


def reboot_cleanup(node: NodeState) -> None:
    """Clear what a reboot clears (tmpfs, mounts, cgroups); keep what is on disk."""
    host.kill_cgroup(node.cgroup_root)
    containerd.kill_leftovers(node.path)
    host.unmount_under([str(node.path)])
    for d in containerd.volatile_dirs(node.path):
        shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(node.path / "cni" / "ipam", ignore_errors=True)
    host.remove_cgroup_root(node.cgroup_root)


def remove(node: NodeState, stop_timeout: float, procs: dict[str, Process]) -> None:
    """Stop the node's processes (``procs``: recorded ones by name) and remove everything
    it created on the host: containers, mounts, network namespaces, cgroups, bridge, CNI
    cache entries, log links. Used by `down`; harmless on a node already stopped or killed."""
    netns: list[str] = []
    ids: list[str] = []
    kubelet_proc = procs.get(node.process_name("kubelet"))
    if kubelet_proc is not None:
        kubelet_proc.stop(timeout=stop_timeout)
    ctrd = procs.get(node.process_name("containerd"))
    if ctrd is not None and ctrd.alive():
        netns = containerd.sandbox_netns_paths(node.path)
        ids = containerd.container_ids(node.path)
        containerd.kill_workloads(node.path)
    ids += _task_ids(node.path)
    for name in ("containerd", "logind"):
        proc = procs.get(node.process_name(name))
        if proc is not None:
            proc.stop(timeout=stop_timeout)
    containerd.kill_leftovers(node.path)
    network.remove_netns(netns)
    host.unmount_under([str(node.path)])
    host.remove_cgroup_root(node.cgroup_root)
    network.delete_bridge(node.bridge)
    network.remove_cni_cache(node.network, ids)
    host.remove_container_log_links(kubelet.pod_logs_dir(node))


def _task_ids(node_dir: Path) -> list[str]:
    """Container IDs from containerd's task dirs: known even when containerd was killed."""
    d = node_dir / "containerd" / "state" / "io.containerd.runtime.v2.task" / "k8s.io"
    return [p.name for p in d.iterdir()] if d.is_dir() else []
