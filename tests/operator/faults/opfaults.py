"""What the operator fault scenarios share: the seed, the workloads of a burst, the API server
restart, and the one check every scenario ends with (`verify`: 0 duplicate slots, 0 duplicate
or missing PVCs, 0 pods admitted uninjected). See conftest.py and docs/reliability.md."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime as dt
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kubehelpers import Kube

from podckpt.devtools import faultsummary
from podckpt.devtools.cluster import components
from podckpt.devtools.cluster.components import Process
from podckpt.devtools.cluster.errors import ClusterError

SEED = int(os.environ.get("FAULT_SEED", "16"))
ON = {"memverge.ai/checkpoint-mode": "true"}
INJECTED = "podckpt.io/injected"
CLAIM = "podckpt.io/claim"
IDENTITY = "podckpt.io/identity"
SLOT = "podckpt.io/slot"
SLOT_GROUP = "podckpt.io/slot-group"
#: A StorageClass whose claims never bind: only the claims matter here, and 200 bound volumes
#: would cost the machine (and a node tier, when it runs, would try to mount them).
CLASS = "podckpt-fault-suite"
#: Pods of the suite are never scheduled (a node tier may run in the same session).
GATE = "podckpt.io/fault-suite"
#: The namespace's store key, created by the controller with the namespace's first pod.
STORE_KEY = "podckpt-store-key"
#: The controller's gate: a pod waits behind it until its checkpoint volume is usable.
VOLUME_GATE = "podckpt.io/checkpoint-volume"


#: `make(labels=None, *, wait_sa=True) -> namespace name` (the `namespaces` fixture).
NamespaceFactory = Callable[..., str]


class Tally:
    """Cases per scenario and pods checked; a loss fails the test that found it."""

    def __init__(self) -> None:
        self.cases: collections.Counter[str] = collections.Counter()
        self.pods = 0
        self.notes: list[str] = []
        self.clock = faultsummary.SuiteClock()

    def add(self, scenario: str, count: int = 1) -> None:
        self.cases[scenario] += count


TALLY = Tally()


# ---- workloads ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
    kind: str  # Deployment | StatefulSet | Job | IndexedJob
    name: str
    pods: int
    opt_in: bool = True  # the pod label; False: the namespace's default asks for it

    def manifest(self) -> dict[str, Any]:
        labels = {"app": self.name, **(ON if self.opt_in else {})}
        template: dict[str, Any] = {
            "metadata": {
                "labels": labels,
                "annotations": {"memverge.ai/checkpoint-storage-class": CLASS},
            },
            "spec": {
                "schedulingGates": [{"name": GATE}],
                "containers": [
                    {
                        "name": "app",
                        "image": "example.invalid/app:1",
                        "command": ["/app"],
                        "resources": {"limits": {"memory": "128Mi"}},
                    }
                ],
            },
        }
        meta = {"name": self.name}
        selector = {"matchLabels": {"app": self.name}}
        if self.kind == "Deployment":
            spec = {"replicas": self.pods, "selector": selector, "template": template}
            return {"metadata": meta, "spec": spec}
        if self.kind == "StatefulSet":
            spec = {
                "replicas": self.pods,
                "serviceName": self.name,
                "podManagementPolicy": "Parallel",
                "selector": selector,
                "template": template,
            }
            return {"metadata": meta, "spec": spec}
        template["spec"]["restartPolicy"] = "Never"
        spec = {"parallelism": self.pods, "completions": self.pods, "template": template}
        if self.kind == "IndexedJob":
            spec["completionMode"] = "Indexed"
        return {"metadata": meta, "spec": spec}

    @property
    def owner_kind(self) -> str:
        return "Job" if self.kind == "IndexedJob" else self.kind

    def create(self, kube: Kube, namespace: str) -> None:
        body = self.manifest()
        if self.kind == "Deployment":
            kube.apps.create_namespaced_deployment(namespace, body)
        elif self.kind == "StatefulSet":
            kube.apps.create_namespaced_stateful_set(namespace, body)
        else:
            kube.batch.create_namespaced_job(namespace, body)


def mix(
    prefix: str, pods_each: int, kinds: dict[str, int], *, opt_in: bool = True
) -> list[Workload]:
    """`kinds[kind]` workloads of each kind, `pods_each` pods each."""
    return [
        Workload(kind, f"{prefix}{kind.lower()[:3]}{i}", pods_each, opt_in)
        for kind, count in kinds.items()
        for i in range(count)
    ]


def create_all(kube: Kube, placed: list[tuple[str, Workload]], parallel: int = 20) -> None:
    """Create every (namespace, workload) at once from `parallel` threads, as many users and
    pipelines applying manifests at the same time would."""
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        for future in [pool.submit(w.create, kube, ns) for ns, w in placed]:
            future.result()


# ---- the check every scenario ends with ------------------------------------------------


def live(pod: dict[str, Any]) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and pod["status"].get("phase") not in (
        "Failed",
        "Succeeded",
    )


@dataclasses.dataclass
class Verdict:
    pods: int = 0
    uninjected: list[str] = dataclasses.field(default_factory=list)
    duplicate_slots: list[str] = dataclasses.field(default_factory=list)
    missing_claims: list[str] = dataclasses.field(default_factory=list)
    extra_claims: list[str] = dataclasses.field(default_factory=list)
    #: claims of Deployment slots whose pod the ReplicaSet deleted as surplus: kept by design
    kept_claims: list[str] = dataclasses.field(default_factory=list)
    bad_owners: list[str] = dataclasses.field(default_factory=list)
    short: list[str] = dataclasses.field(default_factory=list)
    #: Pods still behind the controller's volume gate: the controller lost track of them.
    gated: list[str] = dataclasses.field(default_factory=list)
    #: Namespaces without their store key Secret (their pods could not start).
    keyless: list[str] = dataclasses.field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (
            self.uninjected
            or self.duplicate_slots
            or self.missing_claims
            or self.extra_claims
            or self.bad_owners
            or self.short
            or self.gated
            or self.keyless
        )


def _owner_uids(kube: Kube, namespace: str) -> dict[tuple[str, str], str]:
    uids = {}
    for d in kube.apps.list_namespaced_deployment(namespace).items:
        uids[("Deployment", d.metadata.name)] = d.metadata.uid
    for s in kube.apps.list_namespaced_stateful_set(namespace).items:
        uids[("StatefulSet", s.metadata.name)] = s.metadata.uid
    for j in kube.batch.list_namespaced_job(namespace).items:
        uids[("Job", j.metadata.name)] = j.metadata.uid
    return uids


def judge(kube: Kube, placed: list[tuple[str, Workload]]) -> Verdict:
    """The state now: every workload at its pod count, every pod injected, no slot held by two
    live pods, the PVCs exactly the claims of the live pods, each owned by its workload."""
    v = Verdict()
    for namespace in sorted({ns for ns, _ in placed}):
        workloads = {w.name: w for ns, w in placed if ns == namespace}
        pods = [p for p in kube.pods(namespace) if live(p)]
        v.pods += len(pods)
        by_app: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        slots: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
        claims: dict[str, str] = {}
        for pod in pods:
            meta = pod["metadata"]
            name = f"{namespace}/{meta['name']}"
            by_app[meta["labels"].get("app", "")].append(pod)
            annotations = meta.get("annotations") or {}
            if INJECTED not in annotations or CLAIM not in annotations:
                v.uninjected.append(name)
                continue
            gates = {g["name"] for g in pod["spec"].get("schedulingGates") or ()}
            if VOLUME_GATE in gates:
                v.gated.append(name)
            claims[annotations[CLAIM]] = meta["labels"].get("app", "")
            if SLOT in meta["labels"]:
                slots[(meta["labels"][SLOT_GROUP], meta["labels"][SLOT])].append(name)
        v.duplicate_slots += [f"{g} slot {s}: {n}" for (g, s), n in slots.items() if len(n) > 1]
        for name, w in workloads.items():
            if len(by_app[name]) != w.pods:
                v.short.append(f"{namespace}/{name}: {len(by_app[name])} of {w.pods} pods")
        secrets = {s.metadata.name for s in kube.core.list_namespaced_secret(namespace).items}
        if STORE_KEY not in secrets:
            v.keyless.append(namespace)
        owners = _owner_uids(kube, namespace)
        pvcs = {
            c.metadata.name: c
            for c in kube.core.list_namespaced_persistent_volume_claim(namespace).items
        }
        v.missing_claims += [f"{namespace}/{c}" for c in claims if c not in pvcs]
        kept = _surplus_slot_claims(kube, namespace, workloads, set(pvcs) - set(claims))
        v.kept_claims += [f"{namespace}/{c}" for c in kept]
        v.extra_claims += [f"{namespace}/{c}" for c in pvcs if c not in claims and c not in kept]
        for name, pvc in pvcs.items():
            refs = pvc.metadata.owner_references or []
            app = claims.get(name) or kept.get(name)
            w = workloads.get(app or "")
            want = (w.owner_kind, w.name) if w else None
            if (
                w is None
                or IDENTITY not in (pvc.metadata.annotations or {})
                or len(refs) != 1
                or (refs[0].kind, refs[0].name) != want
                or refs[0].uid != owners.get((w.owner_kind, w.name))
            ):
                v.bad_owners.append(f"{namespace}/{name}: {[(r.kind, r.name) for r in refs]}")
    return v


_DELETED_POD = re.compile(r"^Deleted pod: (\S+)$")


def _surplus_slot_claims(
    kube: Kube, namespace: str, workloads: dict[str, Workload], unheld: set[str]
) -> dict[str, str]:
    """The claims of `unheld` that a Deployment keeps by design, by workload name: a slot's
    claim whose pod its ReplicaSet deleted as surplus. An API server killed after storing a
    pod but before answering makes the ReplicaSet create the pod again (in the next slot,
    the first one's being live) and then delete the extra one; the slot's claim stays with
    the Deployment, as a scaled-down Deployment's upper slots do (docs/architecture.md,
    "Deployment slots"), for the next pod that takes the slot."""
    deleted = {
        m[1]
        for e in kube.core.list_namespaced_event(namespace).items
        if e.reason == "SuccessfulDelete" and (m := _DELETED_POD.match(e.message or ""))
    }
    kept: dict[str, str] = {}
    for claim in unheld:
        for w in workloads.values():
            prefix = f"podckpt-deployment-{w.name}-"
            slot = claim.removeprefix(prefix)
            if w.kind != "Deployment" or not claim.startswith(prefix) or not slot.isdigit():
                continue
            pod = re.compile(rf"^{re.escape(w.name)}-slot-{slot}(-\d+)?$")
            if any(pod.match(name) for name in deleted):
                kept[claim] = w.name
    return kept


def verify(kube: Kube, placed: list[tuple[str, Workload]], timeout: float = 90) -> Verdict:
    """Wait (up to `timeout`) for the workloads to converge, then assert nothing was lost."""
    deadline = time.monotonic() + timeout
    while True:
        verdict = judge(kube, placed)
        if verdict.clean or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert verdict.clean, f"after {timeout:.0f} s: {verdict}"
    TALLY.pods += verdict.pods
    return verdict


# ---- the API server, restarted --------------------------------------------------------


def _save(cluster: Any) -> None:
    save = getattr(cluster, "save", None) or cluster._save
    save()


def restart_apiserver(cluster: Any, *, crash: bool) -> float:
    """Stop the kube-apiserver (SIGKILL when `crash`, else SIGTERM: a graceful shutdown, as in
    a rolling upgrade) and start it again with the same flags on the same port. Returns the
    seconds it was unavailable (until /readyz)."""
    (record,) = [p for p in cluster.state.processes if p["name"] == "kube-apiserver"]
    proc = Process(**record)
    argv = [a.decode() for a in Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[:-1]]
    began = time.monotonic()
    port = int(cluster.server.rsplit(":", 1)[1])
    if not crash:
        # A graceful shutdown: no new requests, in-flight ones drained. Then the process
        # lingers (30 s here, stopping informers); the shutdown that matters is over.
        os.kill(proc.pid, signal.SIGTERM)
        components.wait_until(
            "kube-apiserver stops listening",
            lambda: not proc.alive() or not components.tcp_open("127.0.0.1", port),
            60,
        )
        time.sleep(1)
    if proc.alive():
        os.kill(proc.pid, signal.SIGKILL)
    for _ in range(500):
        if not proc.alive():
            break
        time.sleep(0.02)
    _start_again(cluster, argv, port)
    return time.monotonic() - began


#: How long a restarted kube-apiserver retries a port still held after the old one died.
PORT_RETRY_S = 30.0


def _start_again(cluster: Any, argv: list[str], port: int) -> Process:
    """Start kube-apiserver with `argv` on its old port and wait for /readyz.

    Seen once in CI: the new process exited at once with `bind: address already in use`, and
    every later test of the session failed on a cluster started again from scratch. So an
    EADDRINUSE is retried for PORT_RETRY_S, and who holds the port (`ss`) goes to the
    cluster's restarts.log, the evidence for finding the holder."""
    k = cluster.pki_dir
    ctx = components.client_context(k / "ca.crt", k / "admin.crt", k / "admin.key")
    deadline = time.monotonic() + PORT_RETRY_S
    while True:
        new = components.start("kube-apiserver", argv, cluster.logs_dir)
        cluster.state.processes = [
            p for p in cluster.state.processes if p["name"] != "kube-apiserver"
        ]
        cluster.state.processes.append(asdict(new))
        _save(cluster)
        try:
            components.wait_until(
                "kube-apiserver /readyz",
                lambda: components.http_ok(f"{cluster.server}/readyz", context=ctx, expect="ok"),
                60,
                new,
            )
            return new
        except ClusterError as exc:
            if "address already in use" not in str(exc) or time.monotonic() > deadline:
                raise
            _note_port_holders(cluster, port)
            time.sleep(1)


def _note_port_holders(cluster: Any, port: int) -> None:
    import subprocess  # noqa: PLC0415 - only when a restart found its port taken

    try:
        found = subprocess.run(
            ["ss", "-tanp", f"( sport = :{port} )"], capture_output=True, text=True, check=False
        )
        holders = found.stdout + found.stderr
    except OSError as exc:
        holders = f"(ss: {exc})\n"
    cluster.note_restart(
        f"kube-apiserver restart: port {port} in use; retrying. ss -tanp:\n{holders}"
    )


def count_pods(kube: Kube, namespaces: list[str]) -> int:
    total = 0
    for ns in namespaces:
        try:
            total += len(kube.core.list_namespaced_pod(ns, _request_timeout=5).items)
        except Exception:  # down: the caller counts again later
            return -1
    return total


def refused_creations(kube: Kube, namespace: str) -> int:
    """Pod creations the workload controllers reported failed (their `FailedCreate` Events,
    counted): what a fault cost before the controllers' retries made up for it."""
    return sum(
        e.count or 1
        for e in kube.core.list_namespaced_event(namespace).items
        if e.reason == "FailedCreate"
    )


# ---- admissions in flight, from the webhooks' own log lines ----------------------------

_INJECTING = re.compile(r"^(\S+ \S+) INFO \S+ injecting pod .* in ([\d.]+) ms$")


def peak_in_flight(logs: list[Path], since: dt.datetime) -> int:
    """The most admissions any webhook replica had in progress at one moment (each line gives
    the moment an admission ended and how long it took)."""
    spans = []
    for path in logs:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            m = _INJECTING.match(line)
            if not m:
                continue
            end = dt.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f")
            if end < since:
                continue
            spans.append((end - dt.timedelta(milliseconds=float(m[2])), end))
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    peak = current = 0
    for _, step in points:
        current += step
        peak = max(peak, current)
    return peak
