"""Benchmark the operator and write the "Operator" section of docs/benchmarks.md (only that
section; colleagues own the others).

    .venv/bin/python bench/webhook_latency.py [--pods 200] [--parallel 20] [--rss-pods 1000]

On a fresh apiserver tier (etcd + kube-apiserver + controller-manager), with the operator
installed from config/ and running as its own service accounts:

1. Webhook latency: `--pods` plain checkpointed pods, `--parallel` at a time, whose argv comes
   from a real local registry (image config cached after the first pod). Reported: the API
   server's own measurement of the webhook call (`apiserver_admission_webhook_admission_
   duration_seconds`, which has a bucket at exactly 25 ms), the handler time the webhook logs,
   and the client-side create latency with and without the webhook.
2. Operator memory: a StatefulSet of `--rss-pods` checkpointed pods (Pending: no node), their
   PVCs in a class that never binds; RSS of both processes once the controller is done.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import report
import yaml
from kubernetes import client

from podckpt.devtools.cluster.cluster import Cluster
from podckpt.devtools.operator_harness import Operator, free_port

ROOT = Path(__file__).resolve().parent.parent
WEBHOOK = "opt-in.pods.podckpt.io"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def start_registry(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = work / "registry.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {work / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: warn\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.5)
    layout = work / "layout"
    for argv in (
        ["umoci", "init", "--layout", str(layout)],
        ["umoci", "new", "--image", f"{layout}:t"],
        [
            "umoci",
            "config",
            "--image",
            f"{layout}:t",
            "--config.entrypoint=/app",
            "--config.cmd=serve",
        ],
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{layout}:t",
            f"docker://127.0.0.1:{port}/bench/app:v1",
        ],
    ):
        subprocess.run(argv, check=True, capture_output=True)
    return proc, f"127.0.0.1:{port}/bench/app:v1"


def pod_manifest(name: str, image: str, checkpointed: bool) -> dict[str, Any]:
    labels = {"memverge.ai/checkpoint-mode": "true"} if checkpointed else {}
    return {
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"memverge.ai/checkpoint-storage-volume": "ckpt"},
        },
        "spec": {
            "containers": [
                {"name": "app", "image": image, "resources": {"limits": {"memory": "256Mi"}}}
            ],
            "volumes": [{"name": "ckpt", "emptyDir": {}}],
        },
    }


def create_many(
    cluster: Cluster,
    namespace: str,
    image: str,
    count: int,
    parallel: int,
    checkpointed: bool,
    prefix: str,
) -> list[float]:
    """Create `count` pods, `parallel` at a time, with a light async client (the Python
    kubernetes client costs more CPU per call than the webhook does on this 2-core machine)."""
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    user = config["users"][0]["user"]
    ca = config["clusters"][0]["cluster"]["certificate-authority"]
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(user["client-certificate"], user["client-key"])
    url = f"{cluster.server}/api/v1/namespaces/{namespace}/pods"

    async def run() -> list[float]:
        gate = asyncio.Semaphore(parallel)
        connector = aiohttp.TCPConnector(ssl=context, limit=parallel)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(i: int) -> float:
                manifest = pod_manifest(f"{prefix}-{i}", image, checkpointed)
                async with gate:
                    started = time.perf_counter()
                    async with session.post(url, json=manifest) as response:
                        await response.read()
                        if response.status != 201:
                            raise RuntimeError(f"create {prefix}-{i}: {response.status}")
                    return (time.perf_counter() - started) * 1000

            return list(await asyncio.gather(*(one(i) for i in range(count))))

    return asyncio.run(run())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def webhook_histogram(cluster: Cluster) -> dict[float, float]:
    """Cumulative bucket counts (le -> count) of the API server's webhook call durations."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    buckets: dict[float, float] = {}
    pattern = re.compile(
        r"^apiserver_admission_webhook_admission_duration_seconds_bucket\{(?P<labels>[^}]*)\}"
        r" (?P<value>\S+)$"
    )
    for line in text.splitlines():
        match = pattern.match(line)
        if not match or f'name="{WEBHOOK}"' not in match["labels"]:
            continue
        if 'operation="CREATE"' not in match["labels"]:
            continue
        le = re.search(r'le="([^"]+)"', match["labels"])
        if le is None:
            continue
        bound = float("inf") if le[1] == "+Inf" else float(le[1])
        buckets[bound] = buckets.get(bound, 0.0) + float(match["value"])
    return buckets


def handler_times(log: Path, since: int) -> tuple[list[float], int]:
    """Handler times the webhook logged since `since`, and the number of requests served."""
    with log.open("rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    times = [float(m) for m in re.findall(r"injecting pod .* in ([0-9.]+) ms", text)]
    return times, len(times)


def rss_run(operator: Operator, kube: client.ApiClient, pods: int) -> dict[str, Any]:
    namespace = f"rss-{uuid.uuid4().hex[:6]}"
    core, apps, storage = client.CoreV1Api(kube), client.AppsV1Api(kube), client.StorageV1Api(kube)
    core.create_namespace({"metadata": {"name": namespace}})
    storage.create_storage_class(
        {"metadata": {"name": f"never-{namespace}"}, "provisioner": "example.invalid/never"}
    )
    time.sleep(2)
    before = operator.rss_bytes()
    started = time.monotonic()
    apps.create_namespaced_stateful_set(
        namespace,
        {
            "metadata": {"name": "many"},
            "spec": {
                "replicas": pods,
                "podManagementPolicy": "Parallel",
                "serviceName": "many",
                "selector": {"matchLabels": {"app": "many"}},
                "template": {
                    "metadata": {
                        "labels": {"app": "many", "memverge.ai/checkpoint-mode": "true"},
                        "annotations": {
                            "memverge.ai/checkpoint-storage-class": f"never-{namespace}"
                        },
                    },
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "image": "example.invalid/app:1",
                                "command": ["/app"],
                                "resources": {"limits": {"memory": "64Mi"}},
                            }
                        ]
                    },
                },
            },
        },
    )
    selector = "app.kubernetes.io/name!=x"  # all
    deadline = time.monotonic() + 900
    claims = 0
    while time.monotonic() < deadline:
        claims = len(core.list_namespaced_persistent_volume_claim(namespace).items)
        if claims >= pods:
            break
        time.sleep(2)
    settled = time.monotonic() - started
    time.sleep(5)
    after = operator.rss_bytes()
    count = len(core.list_namespaced_pod(namespace, label_selector=selector).items)
    return {"pods": count, "claims": claims, "seconds": settled, "before": before, "after": after}


def measure(
    cluster: Cluster,
    operator: Operator,
    namespace: str,
    image: str,
    pods: int,
    parallel: int,
    prefix: str,
) -> dict[str, float]:
    """`pods` checkpointed creations `parallel` at a time, then as many plain ones."""
    assert operator.webhook is not None
    log = operator.logs / "webhook.log"
    mark = log.stat().st_size
    hist_before = webhook_histogram(cluster)
    cpu_before = cpu_seconds(operator.webhook.pid)
    with_webhook = create_many(cluster, namespace, image, pods, parallel, True, f"{prefix}-ckpt")
    cpu_per_admission = (cpu_seconds(operator.webhook.pid) - cpu_before) / pods * 1000
    hist_after = webhook_histogram(cluster)
    handler, served = handler_times(log, mark)
    without = create_many(cluster, namespace, image, pods, parallel, False, f"{prefix}-plain")
    delta = {k: hist_after.get(k, 0) - hist_before.get(k, 0) for k in hist_after}
    total = delta.get(float("inf"), 0.0) or 1.0
    return {
        "pods": pods,
        "parallel": parallel,
        "apiserver_calls": delta.get(float("inf"), 0.0),
        "apiserver_within_5ms": delta.get(0.005, 0.0) / total,
        "apiserver_within_25ms": delta.get(0.025, 0.0) / total,
        "apiserver_within_100ms": delta.get(0.1, 0.0) / total,
        "webhook_cpu_ms": cpu_per_admission,
        "served": served,
        "handler_p50": statistics.median(handler),
        "handler_p99": percentile(handler, 99),
        "create_p50_with": statistics.median(with_webhook),
        "create_p99_with": percentile(with_webhook, 99),
        "create_p50_without": statistics.median(without),
        "create_p99_without": percentile(without, 99),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=20)
    parser.add_argument("--rss-pods", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the doc")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="podckpt-bench-operator-"))
    cluster = Cluster(work / "cluster", name="bench-operator", apiserver_port=free_port())
    registry = None
    operator = None
    try:
        args.load_before = os.getloadavg()[0]
        cluster.up_apiserver()
        registry, image = start_registry(work)
        operator = Operator(cluster)
        operator.install()
        operator.start_webhook()
        operator.start_controller()
        kube = cluster.api_client()
        core = client.CoreV1Api(kube)
        namespace = "bench"
        core.create_namespace({"metadata": {"name": namespace}})
        time.sleep(3)  # default service account
        create_many(cluster, namespace, image, 1, 1, True, "warm")  # fills the image cache
        runs = [
            measure(cluster, operator, namespace, image, args.pods, args.parallel, "p"),
            measure(cluster, operator, namespace, image, args.pods // 2, 1, "s"),
        ]
        print(runs, flush=True)
        rss = rss_run(operator, kube, args.rss_pods) if args.rss_pods else None
    finally:
        if operator is not None:
            operator.uninstall()
        if registry is not None:
            registry.terminate()
            registry.wait(timeout=10)
        cluster.down()
        shutil.rmtree(work, ignore_errors=True)
    args.load_after = os.getloadavg()[0]
    section = render(args, runs, rss)
    print(section)
    if not args.no_write:
        report.write_section("operator", section)
    return 0


def render(
    args: argparse.Namespace, runs: list[dict[str, float]], rss: dict[str, Any] | None
) -> str:
    mib = 2**20
    lines = [
        "## Operator",
        "",
        f"Measured by `bench/webhook_latency.py` on {time.strftime('%Y-%m-%d')}: a fresh"
        f" apiserver tier (etcd, kube-apiserver, controller-manager) on {report.machine()}"
        f" (load average {args.load_before:.1f} before, {args.load_after:.1f} after), the operator"
        " installed from `config/` and running as its own service accounts. Pods are plain"
        " checkpointed pods whose argv comes from a real local registry (image config cached"
        " after a warm-up pod); the client is a light async HTTP client on the same machine.",
        "",
        "**Webhook latency.** The API server's own measurement of each webhook call"
        " (`apiserver_admission_webhook_admission_duration_seconds`, buckets at 5, 25 and 100"
        " ms) is the figure the target is about; the handler time is what the webhook itself"
        " logs; the last rows show how long the API server takes for a create with and without"
        " the webhook.",
        "",
        "| measure | "
        + " | ".join(f"{r['pods']:.0f} pods, {r['parallel']:.0f} in parallel" for r in runs)
        + " | target |",
        "|---|" + "---|" * len(runs) + "---|",
    ]

    def row(name: str, cells: list[str], target: str = "") -> None:
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {target} |")

    row("webhook calls ≤ 5 ms", [f"{r['apiserver_within_5ms']:.0%}" for r in runs])
    row(
        "webhook calls ≤ 25 ms",
        [f"{r['apiserver_within_25ms']:.0%}" for r in runs],
        "≥ 99 % at 20 in parallel",
    )
    row("webhook calls ≤ 100 ms", [f"{r['apiserver_within_100ms']:.0%}" for r in runs])
    row("webhook CPU per admission", [f"{r['webhook_cpu_ms']:.1f} ms" for r in runs])
    row(
        "handler time p50 / p99",
        [f"{r['handler_p50']:.1f} / {r['handler_p99']:.1f} ms" for r in runs],
    )
    row(
        "create p50 / p99, checkpointed",
        [f"{r['create_p50_with']:.0f} / {r['create_p99_with']:.0f} ms" for r in runs],
    )
    row(
        "create p50 / p99, not opted in (no webhook call)",
        [f"{r['create_p50_without']:.0f} / {r['create_p99_without']:.0f} ms" for r in runs],
    )
    lines += [
        "",
        "Reading: one at a time, the call the API server measures is mostly under 25 ms while"
        " the handler needs about 1 ms; the rest is the round trip through a CPU-starved API"
        " server. Twenty in parallel, that machine needs far longer for a create with no"
        " webhook at all (last row) than the whole 25 ms budget, and the webhook's own share"
        " (CPU per admission, handler time) stays small: the target is not met on this shared"
        " 2-core machine, and the numbers say the API server, not the webhook, is the"
        " bottleneck here. What the webhook controls was cut: admission bypasses kopf's"
        " generic webhook path (3.9 -> 1.4 ms CPU per admission measured directly, see"
        " docs/operator.md), the patch is a cheap structural diff, namespace defaults come"
        " from a watch, image configs from a cache.",
    ]
    if rss is not None:
        lines += [
            "",
            f"**Operator memory.** A StatefulSet of {rss['pods']} checkpointed pods (Pending,"
            f" no node); the controller created their {rss['claims']} PVCs (in a class that"
            f" never binds) in {rss['seconds']:.0f} s. RSS once settled:",
            "",
            "| process | RSS before | RSS after | target |",
            "|---|---|---|---|",
        ]
        for name in ("webhook", "controller"):
            lines.append(
                f"| {name} | {rss['before'].get(name, 0) / mib:.0f} MiB |"
                f" {rss['after'].get(name, 0) / mib:.0f} MiB | ≤ 150 MB |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
