"""Benchmark the local cluster's set-up and write the "Cluster set-up" section of
docs/benchmarks.md (only that section; colleagues own the others).

    .venv/bin/python bench/cluster_setup.py [--runs 3] [--cold]

Warm: binaries cached; each run starts the apiserver tier, then the node tier on top (what a
pytest session does), records ready times and RSS, tears down. `--cold` also rebuilds the
Kubernetes binaries from the Go module proxy with empty Go caches (GOCACHE, GOMODCACHE) into a
throw-away PODCKPT_CACHE, which is what a fresh machine pays (~10 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import report

from podckpt.devtools.cluster import binaries
from podckpt.devtools.cluster.cluster import Cluster

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    cgroup = "cgroup v1 + unified" if Path("/sys/fs/cgroup/unified").is_dir() else "cgroup v2"
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_kb / 2**20:.0f} GiB, kernel {platform.release()}, "
        f"{cgroup}, Debian {Path('/etc/debian_version').read_text().strip()}"
    )


def cold_build() -> dict[str, Any]:
    """Rebuild from the proxy with empty Go caches, into a throw-away cache dir."""
    with tempfile.TemporaryDirectory(prefix="podckpt-cold-") as tmp:
        env = {
            **os.environ,
            "PODCKPT_CACHE": f"{tmp}/cache",
            "GOCACHE": f"{tmp}/gocache",
            "GOMODCACHE": f"{tmp}/gomod",
        }
        t0 = time.monotonic()
        proc = subprocess.run(
            ["/usr/bin/time", "-v", sys.executable, "-m", "podckpt.devtools.cluster", "build"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        seconds = time.monotonic() - t0
        peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        # /usr/bin/time reports the largest single process (the Go compiler or linker).
        subprocess.run(["chmod", "-R", "u+w", tmp], check=False)
        return {"seconds": seconds, "peak_single_process_mb": int(peak[1]) / 1024 if peak else 0}


def warm_cache_check() -> float:
    t0 = time.monotonic()
    binaries.ensure_binaries()
    return time.monotonic() - t0


def warm_run() -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="podckpt-bench-"))
    c = Cluster(state, name=state.name)
    try:
        t0 = time.monotonic()
        c.up_apiserver()
        api = time.monotonic() - t0
        t1 = time.monotonic()
        c.up_node()
        node = time.monotonic() - t1
        time.sleep(5)  # let the components settle before measuring memory
        rss = c.rss_bytes()
        t2 = time.monotonic()
        c.add_nodes(2)
        second = time.monotonic() - t2
        time.sleep(5)
        rss2 = sum(c.rss_bytes().values())
        return {
            "apiserver_tier": api,
            "node_tier_on_top": node,
            "both": api + node,
            "second_node": second,
            "rss_total_mb": sum(rss.values()) / 2**20,
            "rss_second_node_mb": (rss2 - sum(rss.values())) / 2**20,
            **{f"rss_{k}_mb": v / 2**20 for k, v in rss.items()},
        }
    finally:
        c.down()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="also measure a cold build (~10 min)")
    ap.add_argument(
        "--apt-seconds",
        type=float,
        help="time `hack/setup.sh` took to install the cluster's Debian packages (measured "
        "once on a fresh machine; reinstalling them here would disturb the host)",
    )
    args = ap.parse_args()

    load = os.getloadavg()
    version = binaries.kubernetes_version()
    binaries.ensure_binaries(log=lambda m: print(m, file=sys.stderr))
    cache_s = warm_cache_check()
    runs = []
    for i in range(args.runs):
        r = warm_run()
        print(f"run {i + 1}: {json.dumps({k: round(v, 2) for k, v in r.items()})}")
        runs.append(r)
    cold_file = binaries.cache_root() / "kubernetes" / f"cold-build-{version}.json"
    if args.cold:
        cold = cold_build()
        cold["measured"] = time.strftime("%Y-%m-%d")
        cold_file.write_text(json.dumps(cold))
    elif cold_file.is_file():
        cold = json.loads(cold_file.read_text())  # the last --cold run on this machine
    else:
        cold = None

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def mx(key: str) -> float:
        return max(r[key] for r in runs)

    info = binaries.build_info()
    totals = ("rss_total_mb", "rss_second_node_mb")
    rss_keys = sorted({k for r in runs for k in r if k.startswith("rss_") and k not in totals})
    lines = [
        "## Cluster set-up",
        "",
        f"Machine: {machine()}. Kubernetes {version} (route A: wrapper module over the Go",
        f"module proxy, {info.get('go', '?')}); etcd, containerd, runc from Debian bookworm.",
        f"Command: `.venv/bin/python bench/cluster_setup.py --runs {args.runs}"
        + (" --cold`." if args.cold else "`."),
        f"Measured {time.strftime('%Y-%m-%d')}; median (max) of {args.runs} runs; load average "
        f"{load[0]:.1f} at the start (colleagues' builds and tests share the 2 cores).",
        "",
        "| what | result | target |",
        "|---|---|---|",
        f"| warm `apiserver` tier ready (etcd, apiserver, controller-manager, default "
        f"StorageClass, default ServiceAccount) | {med('apiserver_tier'):.1f} s "
        f"({mx('apiserver_tier'):.1f} s) | <= 15 s |",
        f"| warm `node` tier ready from nothing (apiserver tier + scheduler, registry, "
        f"containerd, pause image, kubelet, node Ready) | {med('both'):.1f} s "
        f"({mx('both'):.1f} s) | <= 45 s |",
        f"| of which node parts on a running apiserver tier | {med('node_tier_on_top'):.1f} s "
        f"({mx('node_tier_on_top'):.1f} s) | |",
        f"| second node added to the running node tier (`up --nodes 2`, the fixture "
        f"`multinode_cluster`: bridge, logind, containerd, images, kubelet, node Ready) | "
        f"{med('second_node'):.1f} s ({mx('second_node'):.1f} s) | |",
        f"| whole cluster RSS, node tier idle, one node | {med('rss_total_mb'):.0f} MB "
        f"({mx('rss_total_mb'):.0f} MB) | < 1.5 GB |",
        f"| RSS of the second node (kubelet, containerd, logind), idle | "
        f"{med('rss_second_node_mb'):.0f} MB ({mx('rss_second_node_mb'):.0f} MB) | |",
        f"| binaries cache check (second run) | {cache_s * 1000:.0f} ms | seconds |",
    ]
    if "build_seconds" in info:
        lines.append(
            f"| cold build recorded in the cache's BUILD-INFO.json (first build on this "
            f"machine) | {float(str(info['build_seconds'])):.0f} s | |"
        )
    if args.apt_seconds:
        lines.append(
            f"| Debian packages of the cluster via `hack/setup.sh` (fresh machine, once) | "
            f"{args.apt_seconds:.0f} s | |"
        )
    if cold:
        lines.append(
            f"| cold build, empty Go caches, from the proxy (measured {cold.get('measured')}) "
            f"| {cold['seconds']:.0f} s "
            f"(largest process {cold['peak_single_process_mb']:.0f} MB) | |"
        )
    if cold:
        total = (args.apt_seconds or 0) + cold["seconds"] + med("both")
        lines.append(
            f"| cold set-up on a fresh machine: packages + cold build + node tier | "
            f"{total / 60:.1f} min | |"
        )
    lines += [
        "",
        "RSS per component (median, MB): "
        + ", ".join(
            f"{k[4:-3]} {statistics.median(r.get(k, 0) for r in runs):.0f}" for k in rss_keys
        )
        + ".",
    ]
    report.write_section("cluster-setup", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
