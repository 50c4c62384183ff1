"""Prometheus metrics of the webhook and the controller, and the `/metrics` endpoint.

Each process exports its own (prometheus-client's default registry, which also carries the
process and Python collectors). Names follow Prometheus conventions: `_total` counters, base
units (seconds, bytes). Labels stay bounded: outcomes and reasons are small fixed sets,
`namespace` and `workload_kind` follow the cluster's own size; histograms carry no label.

Webhook:
    podckpt_admissions_total{outcome}               injected | skipped | denied
    podckpt_admission_duration_seconds{outcome}     time to answer an AdmissionReview
Controller (counted once per agent line: the PVC summary is the journal, see podckpt.api.summary):
    podckpt_checkpoints_total{outcome,namespace,workload_kind}   ok | failed
    podckpt_restores_total{outcome,namespace,workload_kind}      ok | failed | refused (each)
    podckpt_fresh_starts_total{reason,namespace,workload_kind}
        no-checkpoint | restore-failed | policy-fresh | completed | other
    podckpt_dump_duration_seconds, podckpt_commit_duration_seconds,
    podckpt_restore_duration_seconds, podckpt_checkpoint_image_bytes
    podckpt_volumes_provisioned_total{namespace,workload_kind}
    podckpt_orphaned_volumes                        podckpt PVCs without an owner (last sweep)
    podckpt_controller_leader                       1 on the replica that acts
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

logger = logging.getLogger(__name__)

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_BYTES = tuple(float(2**20 * 4**i) for i in range(10))  # 1 MiB .. 256 GiB

ADMISSIONS = Counter("podckpt_admissions", "Pod admissions answered by the webhook", ["outcome"])
ADMISSION_SECONDS = Histogram(
    "podckpt_admission_duration_seconds",
    "Time to answer one AdmissionReview",
    ["outcome"],
    buckets=_FAST,
)

WORKLOAD = ["namespace", "workload_kind"]
CHECKPOINTS = Counter("podckpt_checkpoints", "Checkpoints by outcome", ["outcome", *WORKLOAD])
RESTORES = Counter("podckpt_restores", "Restore attempts by outcome", ["outcome", *WORKLOAD])
FRESH_STARTS = Counter(
    "podckpt_fresh_starts", "Containers started without a restore, by reason", ["reason", *WORKLOAD]
)
DUMP_SECONDS = Histogram("podckpt_dump_duration_seconds", "CRIU dump time", buckets=_SLOW)
COMMIT_SECONDS = Histogram(
    "podckpt_commit_duration_seconds", "Time to save files and commit a generation", buckets=_SLOW
)
RESTORE_SECONDS = Histogram(
    "podckpt_restore_duration_seconds", "Time to restore a generation", buckets=_SLOW
)
IMAGE_BYTES = Histogram(
    "podckpt_checkpoint_image_bytes", "Size of a committed generation", buckets=_BYTES
)
VOLUMES_PROVISIONED = Counter(
    "podckpt_volumes_provisioned", "Checkpoint PVCs created by the controller", WORKLOAD
)
ORPHANED_VOLUMES = Gauge("podckpt_orphaned_volumes", "podckpt PVCs that no workload owns")
LEADER = Gauge("podckpt_controller_leader", "1 while this controller replica is the leader")


async def serve(port: int) -> web.AppRunner | None:
    """`GET /metrics` on `port` (all addresses); None when `port` is 0."""
    if not port:
        return None

    async def metrics(_request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()  # noqa: S104 - scraped through a Service
    logger.info("metrics at :%d/metrics", port)
    return runner
