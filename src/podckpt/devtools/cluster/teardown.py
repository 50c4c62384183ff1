"""`down`: stop what `up` started, by PID, and remove what it created, nothing else.

Order: each node first (kubelet stopped; every task and container of *its* containerd killed
and deleted; containerd and logind stopped; leftovers that are the node's by construction -
containers in its runc root, shims whose ``-address`` is its socket, processes in its cgroup
tree - killed; mounts under its dir, network namespaces, cgroup root, bridge, libcni cache
entries and /var/log/containers links removed), whatever state the node was left in (up,
stopped or killed). Then ``ip_forward`` is restored, the control plane stopped (etcd last: the
apiserver needs it to shut down cleanly), the hostpath PV directories of this cluster deleted
and the state dir removed. Nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from podckpt.devtools.cluster import host, node
from podckpt.devtools.cluster.state import HOSTPATH_PV_DIR, ClusterBase

CONTROL_PLANE = (
    "apiserver-forward",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-apiserver",
    "registry",
)


def down(c: ClusterBase, *, keep_logs: bool = False) -> None:
    """Stop and remove everything of the cluster (harmless when nothing runs)."""
    st = c.state
    procs = {p.name: p for p in c.processes()}
    hostpath_dirs = _hostpath_pv_dirs(c) if "kube-apiserver" in procs else []
    for n in st.nodes:
        node.remove(n, 10, procs)
        for component in node.COMPONENTS:
            procs.pop(n.process_name(component), None)
    if st.nodes:
        host.restore_ip_forward(st.ip_forward)
    for name in CONTROL_PLANE:
        if name in procs:
            procs.pop(name).stop(timeout=10)
    for p in procs.values():  # etcd last: the apiserver needs it to shut down cleanly
        p.stop(timeout=10)
    for d in hostpath_dirs:
        shutil.rmtree(d, ignore_errors=True)
    _remove_state(c, keep_logs=keep_logs)


def _hostpath_pv_dirs(c: ClusterBase) -> list[Path]:
    """Directories the hostpath provisioner made for this cluster's PVs."""
    out = c.kubectl(
        "get",
        "pv",
        "-o",
        "jsonpath={range .items[*]}{.spec.hostPath.path}{'\\n'}{end}",
        check=False,
        timeout=10,
    ).stdout
    return [Path(line) for line in out.split() if Path(line).parent == HOSTPATH_PV_DIR]


def _remove_state(c: ClusterBase, *, keep_logs: bool) -> None:
    if not c.state_dir.exists():
        return
    host.unmount_under([str(c.state_dir)])
    for entry in c.state_dir.iterdir():
        if keep_logs and entry == c.logs_dir:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if not keep_logs or c.logs_dir.parent != c.state_dir:
        with contextlib.suppress(OSError):
            c.state_dir.rmdir()
