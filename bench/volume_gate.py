"""What the scheduling gate costs: a first pod's time from creation to scheduled, with podckpt's
gate (the controller lets the pod through once its new checkpoint PVC is usable) and without
it (the scheduler finds the PVC missing, then unbound, and retries); and a replacement pod's,
whose PVC is there (the restore path, never gated). Writes the "Scheduling gate" section of
docs/benchmarks.md.

    .venv/bin/python bench/volume_gate.py [--samples 8]

On a fresh node tier (etcd, kube-apiserver, controller-manager with the host-path
provisioner, scheduler, kubelet), the operator installed from config/ and run as processes
(`podckpt.devtools.operator_harness`), `PODCKPT_SCHEDULING_GATE` true and false in turn, side
by side in one run. Times are client-side, from a watch: the pod's ADDED event to the first
event with `spec.nodeName`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import report
from kubernetes import client, watch

from podckpt.devtools.cluster.cluster import Cluster
from podckpt.devtools.operator_harness import Operator, free_port

NAMESPACE = "bench-gate"


def statefulset(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "memverge.ai/checkpoint-mode": "true"}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "podckpt.local/none:1",
                            "command": ["/bin/sh"],
                            "resources": {"limits": {"memory": "64Mi"}},
                        }
                    ]
                },
            },
        },
    }


class Watcher:
    """Client-side times of every pod's ADDED event and of its scheduling."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.added: dict[str, float] = {}
        self.scheduled: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._watch()
            except (client.ApiException, OSError):
                time.sleep(0.1)  # a watch restart (or the cluster going down at the end)

    def _watch(self) -> None:
        stream = watch.Watch()
        for event in stream.stream(self.core.list_namespaced_pod, NAMESPACE, timeout_seconds=5):
            now = time.monotonic()
            pod = event["object"]
            uid = pod.metadata.uid
            if event["type"] == "ADDED":
                self.added.setdefault(uid, now)
            if pod.spec.node_name and uid not in self.scheduled:
                self.scheduled[uid] = now
            if self._stop.is_set():
                stream.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def wait_scheduled(self, name: str, exclude: set[str], timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pod in self.core.list_namespaced_pod(NAMESPACE, label_selector=f"app={name}").items:
                uid = pod.metadata.uid
                if uid not in exclude and uid in self.scheduled and uid in self.added:
                    return str(uid)
            time.sleep(0.05)
        raise RuntimeError(f"{name}: no pod scheduled within {timeout} s")


def failed_scheduling(core: client.CoreV1Api) -> int:
    events = core.list_namespaced_event(NAMESPACE, field_selector="reason=FailedScheduling")
    return len(events.items)


def run_mode(
    operator: Operator, kube: client.ApiClient, watcher: Watcher, gate: bool, samples: int
) -> dict[str, Any]:
    operator.stop_webhook()
    operator.stop_controller()
    operator.extra_env["PODCKPT_SCHEDULING_GATE"] = "true" if gate else "false"
    operator.start_webhook()
    operator.start_controller()
    apps = client.AppsV1Api(kube)
    core = client.CoreV1Api(kube)
    before = failed_scheduling(core)
    first: list[float] = []
    replacement: list[float] = []
    for i in range(samples):
        name = f"{'g' if gate else 'n'}{i}"
        apps.create_namespaced_stateful_set(NAMESPACE, statefulset(name))
        uid = watcher.wait_scheduled(name, set())
        first.append(watcher.scheduled[uid] - watcher.added[uid])
        core.delete_namespaced_pod(f"{name}-0", NAMESPACE, grace_period_seconds=0)
        new = watcher.wait_scheduled(name, {uid})
        replacement.append(watcher.scheduled[new] - watcher.added[new])
        apps.delete_namespaced_stateful_set(name, NAMESPACE)
    time.sleep(2)  # the scheduler's last events
    return {
        "gate": gate,
        "first": first,
        "replacement": replacement,
        "failed_scheduling": failed_scheduling(core) - before,
    }


def render(args: argparse.Namespace, runs: list[dict[str, Any]]) -> str:
    lines = [
        "## Scheduling gate",
        "",
        f"`bench/volume_gate.py --samples {args.samples}` on {report.machine()}, load"
        f" {args.load_before:.1f} before / {args.load_after:.1f} after; node tier, host-path"
        " provisioner (`Immediate` binding, the local cluster's default class), the operator as"
        " processes; the two modes side by side in one run. Time from a pod's ADDED watch event"
        " to the first event with `spec.nodeName`, client-side.",
        "",
        "| mode | first pod of a workload: median / max | replacement pod (restore path): median"
        " / max | `FailedScheduling` events |",
        "|---|---|---|---|",
    ]
    for run in runs:
        mode = "gate (default)" if run["gate"] else "no gate (`PODCKPT_SCHEDULING_GATE=false`)"
        first, again = run["first"], run["replacement"]
        lines.append(
            f"| {mode} | {statistics.median(first):.2f} s / {max(first):.2f} s"
            f" | {statistics.median(again):.3f} s / {max(again):.3f} s"
            f" | {run['failed_scheduling']} for {len(first)} workloads |"
        )
    lines += [
        "",
        "A first pod waits for its PVC either way (here the host-path provisioner binds it at once;"
        " a cloud provisioner takes seconds); with the gate it waits as `SchedulingGated` instead"
        " of being reported as unschedulable (about 3 `FailedScheduling` Warnings per workload"
        " without it), and no slower. A replacement pod, whose PVC is there, is not gated.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the doc")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="podckpt-bench-gate-"))
    cluster = Cluster(work / "cluster", name="bench-gate", apiserver_port=free_port())
    operator = None
    watcher = None
    try:
        args.load_before = os.getloadavg()[0]
        cluster.up_apiserver()
        cluster.up_node()
        cluster.create_namespace(NAMESPACE)
        operator = Operator(cluster)
        operator.install()
        kube = cluster.api_client()
        watcher = Watcher(kube)
        runs = [run_mode(operator, kube, watcher, gate, args.samples) for gate in (False, True)]
    finally:
        if watcher is not None:
            watcher.stop()
        if operator is not None:
            operator.uninstall()
        cluster.down()
        shutil.rmtree(work, ignore_errors=True)
    args.load_after = os.getloadavg()[0]
    section = render(args, runs)
    print(section)
    if not args.no_write:
        report.write_section("volume-gate", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
