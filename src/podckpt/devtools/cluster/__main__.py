"""CLI behind hack/cluster.sh: ``up | down | status | env | build | node | load-image``.

Errors a human can fix (no root, no Go, no network to the Go proxy, a port in use, a node
that does not exist) print one line and exit 1; they are never stack traces. `up` on a
running cluster and `down` on nothing are no-ops, so scripts may call them blindly; `up
--nodes N` on a running cluster adds the nodes it lacks.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from pathlib import Path

from podckpt.devtools.cluster.binaries import ensure_binaries
from podckpt.devtools.cluster.cluster import TIER_APISERVER, TIER_NODE, Cluster, Timeouts
from podckpt.devtools.cluster.errors import ClusterError


def _state_dir() -> Path:
    return Path(os.environ.get("PODCKPT_CLUSTER_DIR", "/var/lib/podckpt/cluster"))


def _log(msg: str) -> None:
    print(f"cluster: {msg}", file=sys.stderr, flush=True)


def _env_lines(c: Cluster) -> str:
    return f"export KUBECONFIG={c.kubeconfig}\nexport PATH={c.bin_dir}:$PATH\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="hack/cluster.sh", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the cluster (all of it unless --tier apiserver)")
    up.add_argument("--tier", choices=[TIER_APISERVER, TIER_NODE], default=TIER_NODE)
    up.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    defaults = Timeouts()
    up.add_argument(
        "--node-monitor-grace-period",
        type=int,
        default=defaults.node_monitor_grace_s,
        metavar="S",
        help="seconds without a kubelet heartbeat before a node is NotReady "
        f"(default {defaults.node_monitor_grace_s}; production 50)",
    )
    up.add_argument(
        "--toleration-seconds",
        type=int,
        default=defaults.toleration_s,
        metavar="S",
        help="default seconds pods stay on a NotReady/unreachable node before eviction "
        f"(default {defaults.toleration_s}; production 300)",
    )
    up.add_argument(
        "--shutdown-grace-period",
        type=int,
        default=defaults.shutdown_grace_s,
        metavar="S",
        help="kubelet graceful node shutdown period for `node stop` "
        f"(default {defaults.shutdown_grace_s}; production 0 = off)",
    )
    down = sub.add_parser("down", help="stop what `up` started and remove its state")
    down.add_argument("--keep-logs", action="store_true", help="keep <state>/logs")
    sub.add_parser("status", help="what runs, nodes included (exit 0 if up, 3 if not)")
    sub.add_parser("env", help="shell lines that point kubectl at the cluster")
    sub.add_parser("build", help="build (or find cached) Kubernetes binaries")
    node = sub.add_parser("node", help="stop, kill or start one node")
    node.add_argument("action", choices=["stop", "kill", "start"])
    node.add_argument("name", help="node name (see `status`)")
    load = sub.add_parser("load-image", help="load an OCI image into every node")
    load.add_argument("source", type=Path, help="OCI layout dir, or an OCI / docker archive")
    load.add_argument("ref", help="the image name pods use, e.g. myapp:1")
    load.add_argument(
        "--no-push", action="store_true", help="do not also push it to the local registry"
    )
    args = parser.parse_args(argv)

    try:
        if args.cmd == "build":
            print(ensure_binaries(log=_log))
            return 0
        state_dir = _state_dir()
        state_dir.parent.mkdir(parents=True, exist_ok=True)
        lock_path = state_dir.parent / f".{state_dir.name}.lock"
        with lock_path.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one up/down at a time
            port = int(os.environ.get("PODCKPT_APISERVER_PORT", "6443"))
            timeouts = None
            if args.cmd == "up":
                timeouts = Timeouts(
                    node_monitor_grace_s=args.node_monitor_grace_period,
                    toleration_s=args.toleration_seconds,
                    shutdown_grace_s=args.shutdown_grace_period,
                )
            c = Cluster(state_dir, apiserver_port=port, timeouts=timeouts)
            return _dispatch(args, c)
    except ClusterError as e:
        _log(str(e))
        return 1
    except KeyboardInterrupt:
        _log("interrupted")
        return 130


def _dispatch(args: argparse.Namespace, c: Cluster) -> int:
    if args.cmd == "up":
        return _up(args, c)
    if args.cmd == "node":
        return _node(args, c)
    if args.cmd == "load-image":
        if not c.running(TIER_NODE):
            _log("no node runs; start the cluster with: hack/cluster.sh up")
            return 3
        ref = c.load_image(args.source, args.ref, push=not args.no_push)
        up = [n.name for n in c.state.nodes if n.status == "up"]
        _log(f"{ref} loaded into {', '.join(up)} (and any node started later)")
        if not args.no_push:
            _log(f"also in the local registry as {c.registry_ref(ref)}")
        _log(f"use it as `image: {ref}` with imagePullPolicy IfNotPresent or Never")
        print(ref)
        return 0
    if args.cmd == "down":
        if not c.state.processes and not c.state_dir.exists():
            _log("nothing to stop")
            return 0
        c.down(keep_logs=args.keep_logs)
        _log("stopped; state removed" + (f" (logs kept in {c.logs_dir})" if args.keep_logs else ""))
        return 0
    if args.cmd == "status":
        if not c.state.processes:
            _log("not running")
            return 3
        info = c.describe()
        print(json.dumps(info, indent=2))
        for n in info["nodes"]:
            ready = f"Ready={n['ready']}" if n["ready"] else ""
            _log(f"node {n['name']:<16} {n['status']:<8} {n['ip']:<15} {ready}")
        return 0 if c.running(c.state.tiers[-1] if c.state.tiers else TIER_APISERVER) else 3
    if args.cmd == "env":
        if not c.state.processes:
            _log("not running; start it with: hack/cluster.sh up")
            return 3
        sys.stdout.write(_env_lines(c))
        return 0
    return 2


def _up(args: argparse.Namespace, c: Cluster) -> int:
    if args.nodes < 1:
        _log("--nodes must be at least 1")
        return 2
    want_more = args.tier == TIER_NODE and len(c.state.nodes) < args.nodes
    if c.running(args.tier) and not want_more:
        _log(f"already running ({', '.join(c.state.tiers)}); nothing to do")
    else:
        what = f"{args.tier} tier" + (f", {args.nodes} nodes" if args.tier == TIER_NODE else "")
        _log(f"starting Kubernetes {c.state.version} ({what}) in {c.state_dir}")
        ensure_binaries(c.state.version, log=_log)
        t0 = time.monotonic()
        if args.tier == TIER_NODE:
            c.up_node(nodes=args.nodes)
        else:
            c.up_apiserver()
        _log(f"ready in {time.monotonic() - t0:.1f} s; logs in {c.logs_dir}")
    _log('point kubectl at it: eval "$(hack/cluster.sh env)", which prints:')
    sys.stdout.write(_env_lines(c))
    return 0


def _node(args: argparse.Namespace, c: Cluster) -> int:
    if not c.running(TIER_NODE):
        _log("the node tier does not run; start it with: hack/cluster.sh up")
        return 3
    n = c.node(args.name)
    t0 = time.monotonic()
    if args.action == "stop":
        _log(f"{n.name}: graceful node shutdown (the kubelet stops its pods, then the node)")
        took = c.stop_node(n.name)
        kubelet_s = took["kubelet_shutdown_s"]
        _log(f"{n.name} stopped in {took['total_s']:.1f} s (kubelet {kubelet_s:.1f} s)")
    elif args.action == "kill":
        pids = c.kill_node(n.name)
        _log(f"{n.name} killed: SIGKILL to {len(pids)} processes, no SIGTERM")
        t = c.state.timeouts
        _log(
            f"Kubernetes marks it NotReady after {t.node_monitor_grace_s} s and evicts its "
            f"pods {t.toleration_s} s later (pods without tolerations of their own)"
        )
    else:
        c.start_node(n.name)
        _log(f"{n.name} started and Ready in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
