"""Running a kopf operator the podckpt way: our domain for kopf's own marks, no peering,
credentials shared with our own API client, clean shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import kopf
from kopf._core.engines.peering import Identity

from podckpt.operator.settings import OperatorSettings, load_settings

from .api import KubeAPI

logger = logging.getLogger(__name__)


def configure(settings: kopf.OperatorSettings, op: OperatorSettings) -> None:
    """kopf's annotations and finalizer under our domain (we use neither on user pods: only
    event handlers and indices, which keep no state on objects), and no peering objects."""
    settings.persistence.finalizer = op.annotation("kopf-finalizer")
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=op.domain)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=op.domain, key="last-handled-configuration"
    )
    settings.peering.standalone = True
    # No watch of CRDs (cluster-wide `list customresourcedefinitions`): we handle built-in
    # kinds only, and least privilege matters more than noticing new CRDs.
    settings.scanning.disabled = True
    # kopf posts its own log lines as Events on the handled object; on user pods that is
    # noise ("Handler succeeded"). Our Events are posted explicitly with `kopf.event`, which
    # this level does not filter (kopf.info/warn would be).
    settings.posting.level = logging.CRITICAL
    settings.watching.server_timeout = 300
    # Bounded per-object workers that exit soon when idle: the controller's memory follows
    # the number of pods changing at once, not the number of pods (1,000-pod benchmark).
    settings.queueing.worker_limit = 64
    settings.queueing.idle_timeout = 1.0
    settings.networking.request_timeout = 30


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account, else the kubeconfig (`KUBECONFIG`): used by kopf and by
    our own client alike."""
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(
        **kwargs
    ) or kopf.login_with_kubeconfig(**kwargs)
    return info


def connect(settings: kopf.OperatorSettings) -> KubeAPI:
    """Our API client, which logs in again (as kopf does) when its token is refused or may
    have been rotated."""
    info = login(logger=logger, settings=settings)
    if info is None:
        raise kopf.PermanentError("no credentials: neither a service account nor a kubeconfig")
    return KubeAPI(info, login=lambda: login(logger=logger, settings=settings))


def run(
    registry: kopf.OperatorRegistry,
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    health_port: int = 0,
) -> None:
    """Run the operator until SIGTERM/SIGINT (or `stop_flag`)."""
    asyncio.run(
        kopf.operator(
            registry=registry,
            settings=settings,
            memo=memo,
            clusterwide=True,
            standalone=True,
            # kopf's default identity asks getpass.getuser(), which fails for a uid without a
            # passwd entry (the image runs as 65532 and has none). Peering is off anyway.
            identity=Identity(identity()),
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            # kopf's probes: 200 once the startup handlers ran (the webhook serves, the
            # controller is logged in), 500 when a probe handler raises.
            liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz" if health_port else None,
        )
    )


def identity() -> str:
    """This process among its replicas: the pod's hostname and the PID."""
    return f"{socket.gethostname()}@{os.getpid()}"


Builder = Callable[
    [OperatorSettings], tuple[kopf.OperatorRegistry, kopf.OperatorSettings, kopf.Memo]
]


def main(build: Builder, *, stop_flag: asyncio.Event | None = None) -> int:
    """The entry point of each operator process (webhook, controller): settings from the
    environment, logging, then `build`'s registry run until SIGTERM."""
    op = load_settings()
    logging.basicConfig(level=op.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # kopf reports every handled event at INFO; at our scale that is noise, not information.
    logging.getLogger("kopf.objects").setLevel(max(logging.WARNING, logging.getLogger().level))
    registry, settings, memo = build(op)
    run(registry, settings, memo, stop_flag=stop_flag, health_port=op.health_port)
    return 0
