"""End-to-end restore time on a real node; writes the "End to end" section of docs/benchmarks.md.

A fresh cluster (node tier) with the operator installed in it from its manifests (as in
tests/e2e). A StatefulSet of one replica runs `memhog`: a static C program that fills N MiB of
memory with a pattern and then prints `tick <n> <unix ms>` ten times a second. For each run
the pod is deleted; the StatefulSet recreates it once the old one is gone (its checkpoint
committed); the restored program goes on printing. Measured:

- downtime: from the `kubectl delete` call to the first tick the restored program prints;
- CRIU: the old pod's `dump` + `commit` phases (its log, followed during the deletion) and the
  new pod's `restore` phase (`criu_s`; the rest of the phase is the agent: PID floor, files);
- Kubernetes: the rest (grace-period bookkeeping, pod deletion, StatefulSet recreation,
  admission, scheduling, volume mount, the bundle init container, container start);
- checkpoint size: the `commit` line's bytes.

With ``--across`` it writes the "Across nodes" section instead: a two-node cluster; each run
either drains the node the pod runs on (`kubectl drain --pod-selector`: cordon + Eviction API)
so that the pod comes back on the other node, or - side by side, alternating, in the same
cluster - evicts the pod through the Eviction API with the other node cordoned, so that it
comes back on the same node. Downtime runs from the drain (eviction) call to the restored
program's first tick.

    .venv/bin/python bench/e2e_restore.py [--sizes 100,1024] [--runs 3] [--across] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from e2e_timeline import Timeline

from podckpt.devtools import operator_install
from podckpt.devtools.cluster.cluster import Cluster
from podckpt.devtools.cluster.host import cgroup_hierarchies

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- e2e:begin -->", "<!-- e2e:end -->"
ACROSS_BEGIN, ACROSS_END = "<!-- across:begin -->", "<!-- across:end -->"
P = "memverge.ai/"

MEMHOG = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 100;
    unsigned char *m = malloc(mib << 20);
    for (size_t i = 0; i < (mib << 20); i++) m[i] = (unsigned char)(i * 7 + 3);
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (unsigned long n = 1;; n++) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        printf("tick %lu %lld %u\n", n, (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000,
               m[(n * 4099) % (mib << 20)]);
        usleep(100000);
    }
}
"""


def _memhog(work: Path) -> Path:
    src, out = work / "memhog.c", work / "memhog"
    src.write_text(MEMHOG)
    subprocess.run(["gcc", "-O2", "-static", "-o", str(out), str(src)], check=True)
    return out


#: What lazy restore needs in the container (docs/agent.md "Lazy restore"): CRIU's privileged
#: set and CAP_SYS_PTRACE for userfaultfd. podckpt never adds these; the user does.
LAZY_CAPABILITIES = ["SYS_ADMIN", "NET_ADMIN", "SYS_TIME", "SYS_CHROOT", "SYS_PTRACE"]


#: The uid of the `--user-sizes` rows: a runAsUser makes the user probe unneeded.
APP_UID = 1000
#: The webhook's user probe of the first container (operator/webhook/security.py).
USER_PROBE = "podckpt-user-0"


def _statefulset(
    image: str, mib: int, *, lazy: bool = False, run_as_user: int | None = None
) -> dict[str, Any]:
    limit = f"{mib + 64}Mi"
    container: dict[str, Any] = {
        "name": "app",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/memhog", str(mib)],
        "resources": {"limits": {"memory": limit}},
    }
    annotations = {}
    if lazy:
        container["securityContext"] = {"capabilities": {"add": list(LAZY_CAPABILITIES)}}
        annotations[f"{P}restore-mode"] = "lazy"
    if run_as_user is not None:
        container.setdefault("securityContext", {})["runAsUser"] = run_as_user
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "hog"},
        "spec": {
            "replicas": 1,
            "serviceName": "hog",
            "selector": {"matchLabels": {"app": "hog"}},
            "template": {
                "metadata": {
                    "labels": {"app": "hog", f"{P}checkpoint-mode": "true"},
                    "annotations": annotations,
                },
                "spec": {"containers": [container]},
            },
        },
    }


def _agent_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{") and '"agent":"podckpt"' in line:
            out.append(json.loads(line))
    return out


def _ticks(text: str) -> list[tuple[int, int]]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "tick":
            out.append((int(parts[1]), int(parts[2])))
    return out


def _pod_uid(cluster: Cluster, ns: str) -> str:
    out = cluster.kubectl("get", "pod", "-n", ns, "hog-0", "-o", "json", check=False)
    if out.returncode != 0:
        return ""
    pod = json.loads(out.stdout)
    if pod["metadata"].get("deletionTimestamp"):
        return ""
    running = [s for s in pod["status"].get("containerStatuses", []) if "running" in s["state"]]
    return str(pod["metadata"]["uid"]) if running else ""


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def _node_of_running(cluster: Cluster, ns: str) -> str:
    _wait("hog-0 running", lambda: _pod_uid(cluster, ns), 300)
    return cluster.node_of(ns, "hog-0")


def _delete(cluster: Cluster, ns: str) -> subprocess.Popen[str] | None:
    cluster.kubectl("delete", "pod", "-n", ns, "hog-0", "--wait=false")
    return None


def _drain(cluster: Cluster, ns: str) -> subprocess.Popen[str]:
    """`kubectl drain` of hog-0's node, for hog-0 only (the other pods on the node, the
    operator's among them, stay: their moves would be part of another measurement)."""
    node = cluster.node_of(ns, "hog-0")
    return subprocess.Popen(
        [str(cluster.bin_dir / "kubectl"), "drain", node, "--pod-selector=app=hog",
         "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=600s"],
        env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _evict(cluster: Cluster, ns: str) -> subprocess.Popen[str] | None:
    """What `kubectl drain` does to the pod (Eviction API), without cordoning its node."""
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "hog-0", "namespace": ns},
    }
    cluster.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{ns}/pods/hog-0/eviction", "-f", "-",
        input=json.dumps(eviction),
    )  # fmt: skip
    return None


def _cycle(cluster: Cluster, ns: str, disrupt: Any = _delete) -> dict[str, float]:
    old_uid = _wait("hog-0 running", lambda: _pod_uid(cluster, ns), 300)
    _wait("ticks", lambda: _ticks(cluster.kubectl("logs", "-n", ns, "hog-0").stdout), 120)
    follow = subprocess.Popen(
        [str(cluster.bin_dir / "kubectl"), "logs", "-f", "-n", ns, "hog-0"],
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(1.0)
    timeline = Timeline(cluster, ns, "hog-0") if disrupt is _delete else None
    read_before = _disk_reads()
    t0 = time.time()
    background = disrupt(cluster, ns)
    old_text, _ = follow.communicate(timeout=600)
    new_uid = _wait(
        "the new hog-0", lambda: (u := _pod_uid(cluster, ns)) and u != old_uid and u, 600
    )

    def first_tick() -> list[tuple[int, int]]:
        return _ticks(cluster.kubectl("logs", "-n", ns, "hog-0", check=False).stdout)

    ticks = _wait("the restored program's first tick", first_tick, 300)
    disk_read = _disk_reads() - read_before
    if background is not None and background.wait(timeout=600) != 0:
        raise RuntimeError(f"kubectl drain failed: {background.communicate()[1]}")
    new_text = cluster.kubectl("logs", "-n", ns, "hog-0").stdout
    old = {r["phase"]: r for r in _agent_lines(old_text)}
    new = {r["phase"]: r for r in _agent_lines(new_text)}
    restore = new.get("restore", {})
    if restore.get("outcome") != "ok":
        raise RuntimeError(f"restore did not succeed: {restore or new}")
    last_old_tick = max(n for n, _ in _ticks(old_text))
    if ticks[0][0] <= last_old_tick - 2:
        raise RuntimeError(f"restarted from {ticks[0][0]}, the old pod was at {last_old_tick}")
    downtime = ticks[0][1] / 1000 - t0
    dump = float(old["dump"]["duration_s"])
    commit = float(old["commit"]["duration_s"])
    criu_restore = float(restore.get("criu_s", restore["duration_s"]))
    agent_restore = float(restore["duration_s"]) - criu_restore
    steps = _steps(timeline.finish(old_uid), t0, old, new, restore) if timeline else {}
    return {
        **steps,
        **_memcg(new_uid),
        "disk_read_mib": disk_read / 2**20,
        "downtime_s": downtime,
        "dump_s": dump,
        "commit_s": commit,
        "criu_restore_s": criu_restore,
        "agent_restore_s": agent_restore,
        "kubernetes_s": downtime - dump - commit - float(restore["duration_s"]),
        "checkpoint_mib": float(old["commit"].get("bytes", 0)) / 2**20,
    }


def _memcg(uid: str) -> dict[str, float]:
    """The restored pod's memory cgroup after the restore: `workingset_refault_file` (file
    pages read in whose eviction the kernel remembers, in any cgroup: not a count of pages
    read twice), how often it hit its limit and its peak. Empty where the cgroup is not
    found."""
    names = {f"pod{uid}", f"pod{uid.replace('-', '_')}.slice"}
    for hierarchy in cgroup_hierarchies():
        if not (hierarchy / "memory.stat").exists() and hierarchy.name != "memory":
            continue
        found = [d for d in hierarchy.rglob("pod*") if d.name in names and d.is_dir()]
        if not found:
            continue
        pod = found[0]
        stat = dict(
            (k, int(v))
            for k, v in (line.split() for line in (pod / "memory.stat").read_text().splitlines())
        )
        refault = stat.get("total_workingset_refault_file", stat.get("workingset_refault_file"))
        if (pod / "memory.failcnt").exists():  # cgroup v1
            failcnt = int((pod / "memory.failcnt").read_text())
            peak = int((pod / "memory.max_usage_in_bytes").read_text())
        else:
            events = dict(line.split() for line in (pod / "memory.events").read_text().splitlines())
            failcnt = int(events.get("max", 0))
            peak = int((pod / "memory.peak").read_text()) if (pod / "memory.peak").exists() else 0
        out = {"memcg_limit_hits": float(failcnt), "memcg_peak_mib": peak / 2**20}
        if refault is not None:
            out["refault_mib"] = refault * 4096 / 2**20
        return out
    return {}


def _disk_reads() -> int:
    """Bytes read from the machine's disks so far (/sys/block/*/stat; not loop or RAM
    devices). The blkio cgroup's counters stay 0 here, so the cycle's reads are taken
    machine-wide: the page images read from disk once, or more than once."""
    total = 0
    for stat in Path("/sys/block").glob("*/stat"):
        if stat.parent.name.startswith(("loop", "ram", "zram", "dm-")):
            continue
        total += int(stat.read_text().split()[2]) * 512
    return total


def _epoch(ts: str) -> float:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _steps(
    times: dict[str, float],
    t0: float,
    old: dict[str, Any],
    new: dict[str, Any],
    restore: dict[str, Any],
) -> dict[str, float]:
    """Consecutive steps of the replacement, in seconds (e2e_timeline.py)."""
    old_exit = times.get("old_app_exit") or _epoch(old["exit"]["ts"])
    restored = _epoch(restore["ts"])
    agent_start = restored - float(restore.get("since_process_start_s") or restore["duration_s"])
    probe_start, probe_exit = (
        times.get(f"new_{USER_PROBE}_start"),
        times.get(f"new_{USER_PROBE}_exit"),
    )
    marks = [
        ("delete_to_old_exit", t0, old_exit),
        ("old_exit_to_pod_gone", old_exit, times.get("old_pod_gone")),
        ("pod_gone_to_new_pod", times.get("old_pod_gone"), times.get("new_pod_added")),
        ("new_pod_to_scheduled", times.get("new_pod_added"), times.get("new_pod_scheduled")),
        ("scheduled_to_sandbox", times.get("new_pod_scheduled"), times.get("new_sandbox_start")),
        ("sandbox_to_init", times.get("new_sandbox_start"), times.get("new_podckpt-bundle_start")),
        ("init_copy", times.get("new_podckpt-bundle_start"), times.get("new_podckpt-bundle_exit")),
        ("init_to_app", times.get("new_podckpt-bundle_exit"), times.get("new_app_start")),
        ("init_to_probe", times.get("new_podckpt-bundle_exit"), probe_start),
        ("probe_run", probe_start, probe_exit),
        ("probe_to_app", probe_exit, times.get("new_app_start")),
        ("app_to_restored", times.get("new_app_start"), restored),
        ("agent_start_to_restored", agent_start, restored),
    ]
    return {name: b - a for name, a, b in marks if a is not None and b is not None}


STEPS = (
    ("delete_to_old_exit", "delete → old agent exits (dump + commit + exit)"),
    ("old_exit_to_pod_gone", "old container exit → old pod gone (kubelet teardown, API delete)"),
    ("pod_gone_to_new_pod", "old pod gone → new pod created (StatefulSet controller, admission)"),
    ("new_pod_to_scheduled", "new pod → scheduled"),
    ("scheduled_to_sandbox", "scheduled → pod sandbox started (kubelet: volumes, sandbox, CNI)"),
    ("sandbox_to_init", "sandbox → bundle init container started"),
    ("init_copy", "bundle init container (copy of the bundle)"),
    ("init_to_app", "bundle init exit → application container started"),
    ("init_to_probe", "of which: bundle init exit → user probe init container started"),
    ("probe_run", "of which: user probe (the image's USER, no runAsUser set)"),
    ("probe_to_app", "of which: user probe exit → application container started"),
    ("app_to_restored", "application container started → restored program running"),
    ("agent_start_to_restored", "of which: agent process start → restored (restore phase)"),
)


def _fmt(values: list[float], digits: int = 2) -> str:
    return (
        f"{statistics.median(values):.{digits}f} "
        f"(min {min(values):.{digits}f}, max {max(values):.{digits}f})"
    )


def _across_runs(cluster: Cluster, ns: str, runs: int) -> dict[str, list[dict[str, float]]]:
    """``runs`` one-node evictions and ``runs`` cross-node drains, alternating."""
    out: dict[str, list[dict[str, float]]] = {"one": [], "across": []}
    for i in range(runs):
        for mode in ("one", "across"):
            source = _node_of_running(cluster, ns)
            others = [n for n in cluster.node_names if n != source]
            if mode == "one":
                for n in others:
                    cluster.kubectl("cordon", n)
            try:
                r = _cycle(cluster, ns, _evict if mode == "one" else _drain)
            finally:
                for n in cluster.node_names:
                    cluster.kubectl("uncordon", n)
            target = cluster.node_of(ns, "hog-0")
            if (target == source) != (mode == "one"):
                raise RuntimeError(f"{mode}: hog-0 went from {source} to {target}")
            out[mode].append(r)
            print(f"run {i + 1} {mode} {source}->{target}: {json.dumps(r)}", file=sys.stderr)
    return out


def _across_section(
    results: dict[int, dict[str, list[dict[str, float]]]],
    args: argparse.Namespace,
    load: tuple[float, float],
) -> str:
    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def ours(r: dict[str, float]) -> float:
        return r["dump_s"] + r["commit_s"] + r["criu_restore_s"] + r["agent_restore_s"]

    lines = [
        ACROSS_BEGIN,
        "## Across nodes",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.release()}; load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after (the 2 cores are shared with other "
        f"work). Command: `.venv/bin/python bench/e2e_restore.py --across --sizes {args.sizes} "
        f"--runs {args.runs}`. The local cluster with two nodes (`hack/cluster.sh up --nodes 2`: "
        "one control plane, each node its own kubelet, containerd, bridge and cgroup root) "
        "and the operator installed in it; a StatefulSet of one replica (static C program, N "
        "MiB touched, ticks every 100 ms); its checkpoint volume is the default StorageClass's "
        "(hostpath provisioner: a host directory both nodes mount, standing for network "
        "storage; no attach step). Alternating in one run: **across** = `kubectl drain "
        "<node> --pod-selector=app=hog` (cordon + Eviction API), the pod comes back on the "
        "other node; **one node** = the same eviction through the Eviction API with the other "
        "node cordoned, the pod comes back on its node. Downtime: the drain (eviction) call → "
        "the restored program's first tick. Seconds: median (min, max) of "
        f"{args.runs} runs each.",
        "",
        "| memory | one node: evicted → running again | across: drained → running again on "
        "the other node | across minus one node (target ≤ 1.5 s) | ours: CRIU dump + commit + "
        "restore + agent (one / across) | Kubernetes (one / across) |",
        "|---|---|---|---|---|---|",
    ]
    for mib, by_mode in results.items():
        one, across = by_mode["one"], by_mode["across"]
        diff = med(across, "downtime_s") - med(one, "downtime_s")
        lines.append(
            f"| {mib} MiB | {_fmt([r['downtime_s'] for r in one])} s "
            f"| {_fmt([r['downtime_s'] for r in across])} s "
            f"| {diff:+.2f} s "
            f"| {statistics.median(ours(r) for r in one):.2f} / "
            f"{statistics.median(ours(r) for r in across):.2f} s "
            f"| {med(one, 'kubernetes_s'):.2f} / {med(across, 'kubernetes_s'):.2f} s |"
        )
    lines += [
        "",
        "Kubernetes' share is the downtime minus the agent's phases: the eviction (graceful "
        "deletion), the old pod's removal once its containers exit, the StatefulSet controller "
        "recreating the pod, admission by the webhook, scheduling (onto the other node when "
        "its own is cordoned), mounting the volumes (no attach: the volume is a host "
        "directory), the bundle init container and the container start. Ours is the same "
        "work on either node: the checkpoint is written to and read from the same volume.",
        ACROSS_END,
    ]
    return "\n".join(lines)


def _write_section(section: str, begin: str, end: str) -> None:
    text = DOC.read_text()
    if begin in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.write_text(text)


def main_across(args: argparse.Namespace) -> int:
    load_before = os.getloadavg()[0]
    results: dict[int, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="podckpt-bench-across-") as tmp:
        work = Path(tmp)
        cluster = Cluster(work / "cluster", name="bench-across")
        try:
            cluster.up_apiserver()
            cluster.up_node(nodes=2)
            operator_install.install(cluster, work=work / "images")
            image = cluster.load_image(_memhog(work), "podckpt.local/memhog:1", push=False)
            for mib in (int(s) for s in args.sizes.split(",")):
                ns = cluster.create_namespace(f"bench-{mib}")
                cluster.kubectl(
                    "apply", "-n", ns, "-f", "-", input=json.dumps(_statefulset(image, mib))
                )
                results[mib] = _across_runs(cluster, ns, args.runs)
                cluster.kubectl("delete", "namespace", ns, "--wait=false")
        finally:
            cluster.down()
    section = _across_section(results, args, (load_before, os.getloadavg()[0]))
    print(section)
    if not args.no_write:
        _write_section(section, ACROSS_BEGIN, ACROSS_END)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="100", help="MiB of application memory, comma list")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--across", action="store_true", help="the Across nodes section")
    parser.add_argument(
        "--lazy-sizes", default="", help="also these sizes with restore-mode lazy (comma list)"
    )
    parser.add_argument(
        "--user-sizes",
        default="",
        help=f"also these sizes with runAsUser {APP_UID}: no user probe init container",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.across:
        return main_across(args)
    load_before = os.getloadavg()[0]
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="podckpt-bench-e2e-") as tmp:
        work = Path(tmp)
        cluster = Cluster(work / "cluster", name="bench-e2e")
        try:
            cluster.up_apiserver()
            cluster.up_node()
            operator_install.install(cluster, work=work / "images")
            image = cluster.load_image(_memhog(work), "podckpt.local/memhog:1", push=False)
            plan = [(f"{m} MiB", int(m), "") for m in args.sizes.split(",")]
            plan += [(f"{m} MiB, lazy", int(m), "lazy") for m in args.lazy_sizes.split(",") if m]
            plan += [
                (f"{m} MiB, runAsUser", int(m), "user") for m in args.user_sizes.split(",") if m
            ]
            for label, mib, variant in plan:
                ns = cluster.create_namespace(f"bench-{mib}{'-' + variant if variant else ''}")
                manifest = _statefulset(
                    image,
                    mib,
                    lazy=variant == "lazy",
                    run_as_user=APP_UID if variant == "user" else None,
                )
                cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
                runs = results.setdefault(label, [])
                for i in range(args.runs):
                    runs.append(_cycle(cluster, ns))
                    print(f"{label} run {i + 1}: {json.dumps(runs[-1])}", file=sys.stderr)
                cluster.kubectl("delete", "namespace", ns, "--wait=false")
        finally:
            cluster.down()
    load_after = os.getloadavg()[0]
    lines = [
        BEGIN,
        "## End to end",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.release()}; load average "
        f"{load_before:.1f} before, {load_after:.1f} after (the 2 cores are shared with other "
        f"work). Command: `.venv/bin/python bench/e2e_restore.py --sizes {args.sizes} "
        + (f"--lazy-sizes {args.lazy_sizes} " if args.lazy_sizes else "")
        + (f"--user-sizes {args.user_sizes} " if args.user_sizes else "")
        + f"--runs {args.runs}`. A StatefulSet of one replica (static C program, N MiB touched, "
        "ticks every 100 ms) on the local cluster with the operator installed in it; the "
        "checkpoint volume is the hostpath provisioner's (local disk). Seconds: median "
        f"(min, max) of {args.runs} pod deletions. Rows marked *lazy*: the same with "
        "`restore-mode: lazy` and the container granting what lazy restore needs (CRIU's "
        'privileged set and SYS_PTRACE, docs/agent.md "Lazy restore"; podckpt never adds '
        "them): the restored program runs before its memory is in. Rows marked *runAsUser*: "
        f"the container sets `runAsUser: {APP_UID}`, so the webhook adds no user probe init "
        "container (without one, the image's USER decides and the probe finds out what the "
        'runtime makes of it, docs/security.md "The application\'s privileges").',
        "",
        "| memory | downtime: delete → restored program runs | CRIU dump + commit | CRIU "
        "restore | agent (restore minus CRIU) | Kubernetes (the rest) | checkpoint size |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, runs in results.items():
        lines.append(
            f"| {label} | {_fmt([r['downtime_s'] for r in runs])} s "
            f"| {_fmt([r['dump_s'] + r['commit_s'] for r in runs])} s "
            f"| {_fmt([r['criu_restore_s'] for r in runs])} s "
            f"| {_fmt([r['agent_restore_s'] for r in runs])} s "
            f"| {_fmt([r['kubernetes_s'] for r in runs])} s "
            f"| {_fmt([r['checkpoint_mib'] for r in runs], 1)} MiB |"
        )
    lines += [
        "",
        "Reads from disk during each cycle (the machine's disks, from the deletion to the "
        "first tick), and the restored pod's memory cgroup after the restore (medians): "
        "`workingset_refault_file` (file pages read in whose earlier eviction the kernel "
        "remembers, in any cgroup: the old pod's dump evicting what it wrote counts too), how "
        "often the cgroup hit its limit (v1 `failcnt`, v2 `max` events) and its peak:",
        "",
        "| memory | read from disk | refaulted file pages | limit hits | peak |",
        "|---|---|---|---|---|",
    ]
    for label, runs in results.items():
        got = [r for r in runs if "memcg_peak_mib" in r]
        if got:
            refaulted = [r["refault_mib"] for r in got if "refault_mib" in r]
            disk = [r["disk_read_mib"] for r in runs if "disk_read_mib" in r]
            lines.append(
                f"| {label} | "
                + (f"{_fmt(disk, 0)} MiB | " if disk else "- | ")
                + (f"{_fmt(refaulted, 0)} MiB" if refaulted else "-")
                + f" | {_fmt([r['memcg_limit_hits'] for r in got], 0)} "
                f"| {_fmt([r['memcg_peak_mib'] for r in got], 0)} MiB |"
            )
    lines += [
        "",
        "Where the time goes (medians, seconds; bench/e2e_timeline.py: pod watch, containerd's"
        " task events, the agents' lines):",
        "",
        "| step | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for key, label in STEPS:
        cells = []
        for runs in results.values():
            values = [r[key] for r in runs if key in r]
            cells.append(f"{statistics.median(values):.2f}" if values else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Kubernetes' share is the downtime minus the agent's phases: the kubelet noticing the "
        "deletion, the old pod's removal after its containers exit, the StatefulSet "
        "controller recreating the pod (it waits for the old one to be gone), admission by the "
        "webhook, scheduling, mounting the volumes, the bundle init container (45 MB copy) "
        "and the container start.",
        END,
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        _write_section(section, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
