"""The HTTPS endpoint the API server calls: POST /inject (AdmissionReview), GET /healthz."""

from __future__ import annotations

import json
import logging
import ssl

from aiohttp import web

from .handlers import WebhookState, admit
from .review import AdmissionReview

logger = logging.getLogger(__name__)

INJECT_PATH = "/inject"


def build_app(state: WebhookState) -> web.Application:
    async def inject(request: web.Request) -> web.Response:
        try:
            review: AdmissionReview = json.loads(await request.read())
            review["request"]["uid"]
        except (ValueError, KeyError, TypeError):
            return web.Response(status=400, text="not an AdmissionReview")
        response = await admit(state, review)
        return web.Response(body=json.dumps(response), content_type="application/json")

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=8 * 2**20)
    app.router.add_post(INJECT_PATH, inject)
    app.router.add_get("/healthz", healthz)
    return app


async def start(
    state: WebhookState, *, address: str, port: int, certfile: str, keyfile: str
) -> web.AppRunner:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    runner = web.AppRunner(build_app(state), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, address, port, ssl_context=context, backlog=256).start()
    logger.info("webhook listening on %s:%d", address, port)
    return runner
