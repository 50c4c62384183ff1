"""`python -m podckpt.operator.webhook`: the mutating admission webhook server."""

from __future__ import annotations

import sys

# kopf imports the official kubernetes client when it is installed, for a login method we do
# not use (we log in with kopf's own service-account/kubeconfig readers): not importing it
# saves ~10 MB of resident memory per process.
sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
# ruff: noqa: E402 - the imports below must come after that line

import asyncio
import contextlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import kopf
from aiohttp import web

from podckpt.operator import certs, metrics
from podckpt.operator.kube import runner
from podckpt.operator.kube.api import ApiError
from podckpt.operator.settings import OperatorSettings

from . import server
from .handlers import WebhookState, register
from .imageconfig import ImageConfigResolver
from .pullsecrets import PullSecrets
from .slots import SlotBook

logger = logging.getLogger("podckpt.operator.webhook")


async def keep_ca_bundle(state: WebhookState, ca: bytes) -> None:
    """Write our CA into the webhook configuration again whenever it lost it: re-applying the
    manifests (`kubectl apply -k config/`, `helm upgrade`) resets the caBundle, and the API
    server would then refuse to call us (fail closed: opted-in pods refused)."""
    assert state.api is not None
    while True:
        await asyncio.sleep(state.op.ca_bundle_check_seconds)
        try:
            await certs.inject_ca_bundle(state.api, state.op, ca)
        except ApiError as exc:
            logger.warning(
                "could not check the caBundle of %s: %s", state.op.webhook_configuration, exc
            )


def build(op: OperatorSettings) -> tuple[kopf.OperatorRegistry, kopf.OperatorSettings, kopf.Memo]:
    registry = kopf.OperatorRegistry()
    settings = kopf.OperatorSettings()
    runner.configure(settings, op)
    settings.posting.enabled = False  # the webhook reports through admission responses
    state = WebhookState(
        op=op,
        resolver=ImageConfigResolver(
            insecure_registries=op.insecure_registries,
            tag_cache_seconds=op.tag_cache_seconds,
            cache_size=op.image_config_cache_size,
            timeout=op.registry_timeout_seconds,
            platform=(op.platform_os, op.platform_architecture),
            max_reply_bytes=op.registry_max_reply_bytes,
            token_hosts=op.registry_token_hosts,
        ),
        slots=SlotBook(op.slot_reservation_seconds),
        secrets=PullSecrets(f"{op.operator_namespace}:{op.webhook_service_account}"),
    )
    memo = kopf.Memo(podckpt=state)
    register(registry)
    kopf.on.login(registry=registry)(runner.login)
    servers: list[web.AppRunner] = []
    tasks: list[asyncio.Task[None]] = []

    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Certificates and the HTTPS server are ours (server.py), not kopf's admission server.
        state.api = runner.connect(settings)
        # Namespace defaults must be known before the first admission; the watch (kopf)
        # keeps them current afterwards.
        listing = await state.api.get("/api/v1/namespaces")
        for item in listing.get("items") or ():
            meta = item.get("metadata") or {}
            state.namespaces[meta["name"]] = (
                dict(meta.get("labels") or {}),
                dict(meta.get("annotations") or {}),
            )
        served = await metrics.serve(op.metrics_port)
        if served is not None:
            servers.append(served)
        certfile: str | None = op.webhook_certfile
        keyfile: str | None = op.webhook_keyfile
        directory: Path | None = None
        if not (certfile and keyfile):
            bundle = await certs.ensure_certificate(state.api, op)
            await certs.inject_ca_bundle(state.api, op, bundle.ca)
            tasks.append(asyncio.create_task(keep_ca_bundle(state, bundle.ca)))
            # ssl reads the key only from a file: it lives in a private directory just
            # until the server has loaded it, never longer (it is the webhook's secret).
            directory = Path(tempfile.mkdtemp(prefix="podckpt-webhook-tls-"))
            _ca_path, cert_path, key_path = bundle.write(directory)
            certfile, keyfile = str(cert_path), str(key_path)
        try:
            servers.append(
                await server.start(
                    state,
                    address=op.webhook_address,
                    port=op.webhook_port,
                    certfile=certfile,
                    keyfile=keyfile,
                )
            )
        finally:
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)

    async def probe(**_: Any) -> dict[str, Any]:
        """kopf's /healthz: the HTTPS endpoint accepts connections (else the kubelet takes the
        replica out of the Service, then restarts it)."""
        host = "127.0.0.1" if op.webhook_address in ("0.0.0.0", "") else op.webhook_address  # noqa: S104
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, op.webhook_port), timeout=3
            )
        except (OSError, TimeoutError) as exc:
            raise kopf.PermanentError(f"webhook port {op.webhook_port}: {exc}") from None
        writer.close()
        return {"serving": True, "admitted": state.admitted, "denied": state.denied}

    async def cleanup(**_: Any) -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for running in servers:
            await running.cleanup()
        await state.reporter.drain()
        await state.resolver.close()
        if state.api is not None:
            await state.api.close()

    kopf.on.startup(registry=registry)(startup)
    kopf.on.probe(registry=registry, id="webhook")(probe)
    kopf.on.cleanup(registry=registry)(cleanup)
    return registry, settings, memo


def main() -> int:
    return runner.main(build)


if __name__ == "__main__":
    sys.exit(main())
