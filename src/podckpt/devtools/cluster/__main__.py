"""CLI behind hack/cluster.sh: ``up | down | status | env | build``.

Errors a human can fix (no root, no Go, no network to the Go proxy, a port in use) print one
line and exit 1; they are never stack traces. `up` on a running cluster and `down` on nothing
are no-ops, so scripts may call them blindly.
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
from podckpt.devtools.cluster.cluster import TIER_APISERVER, TIER_NODE, Cluster
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
    down = sub.add_parser("down", help="stop what `up` started and remove its state")
    down.add_argument("--keep-logs", action="store_true", help="keep <state>/logs")
    sub.add_parser("status", help="what runs (exit 0 if up, 3 if not)")
    sub.add_parser("env", help="shell lines that point kubectl at the cluster")
    sub.add_parser("build", help="build (or find cached) Kubernetes binaries")
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
            c = Cluster(state_dir, apiserver_port=port)
            return _dispatch(args, c)
    except ClusterError as e:
        _log(str(e))
        return 1
    except KeyboardInterrupt:
        _log("interrupted")
        return 130


def _dispatch(args: argparse.Namespace, c: Cluster) -> int:
    if args.cmd == "up":
        was_running = c.running(args.tier)
        if was_running:
            _log(f"already running ({', '.join(c.state.tiers)}); nothing to do")
        else:
            _log(f"starting Kubernetes {c.state.version} ({args.tier} tier) in {c.state_dir}")
            ensure_binaries(c.state.version, log=_log)
            t0 = time.monotonic()
            if args.tier == TIER_NODE:
                c.up_node()
            else:
                c.up_apiserver()
            _log(f"ready in {time.monotonic() - t0:.1f} s; logs in {c.logs_dir}")
        _log('point kubectl at it: eval "$(hack/cluster.sh env)", which prints:')
        sys.stdout.write(_env_lines(c))
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
        print(json.dumps(c.describe(), indent=2))
        return 0 if c.running(c.state.tiers[-1] if c.state.tiers else TIER_APISERVER) else 3
    if args.cmd == "env":
        if not c.state.processes:
            _log("not running; start it with: hack/cluster.sh up")
            return 3
        sys.stdout.write(_env_lines(c))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
