"""What a hostile or broken registry can make the webhook do: each test is an attack.

Registries here are small in-process servers on loopback addresses (127.0.0.1 is "the
registry", 127.0.0.2 is "another host"), so the webhook's real HTTP client is what is tested.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from podckpt.operator.settings import OperatorSettings
from podckpt.operator.webhook.handlers import WebhookState, admit
from podckpt.operator.webhook.imageconfig import ImageConfigError, ImageConfigResolver
from podckpt.operator.webhook.pullsecrets import PullSecrets
from podckpt.operator.webhook.registryhttp import Credential
from podckpt.operator.webhook.slots import SlotBook

GIB = 2**30
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(host: str, routes: dict[str, Handler]) -> AsyncIterator[str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"{host}:{port}"
    finally:
        await runner.cleanup()


def _image(entrypoint: list[str]) -> tuple[bytes, bytes, str]:
    """(manifest, config, config digest) of a layerless image."""
    config = json.dumps({"config": {"Entrypoint": entrypoint}}).encode()
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"digest": digest, "size": len(config)},
            "layers": [],
        }
    ).encode()
    return manifest, config, digest


class Sent:
    """Bytes a handler managed to write before the client gave up."""

    total = 0


def _huge(declare_length: bool) -> tuple[Handler, Sent]:
    sent = Sent()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        if declare_length:
            response.content_length = GIB
        await response.prepare(request)
        chunk = b"[" * 65536
        with contextlib.suppress(ConnectionError):
            while sent.total < GIB:
                await response.write(chunk)
                sent.total += len(chunk)
        return response

    return handler, sent


@pytest.mark.asyncio
@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
async def test_a_1gib_registry_reply_is_refused_without_reading_it(declare_length: bool) -> None:
    handler, sent = _huge(declare_length)
    async with serve("127.0.0.1", {"/v2/{rest:.*}": handler}) as host:
        resolver = ImageConfigResolver(timeout=30)
        try:
            with pytest.raises(ImageConfigError, match=r"more than|larger than"):
                await resolver.resolve(f"{host}/app:1")
        finally:
            await resolver.close()
    assert sent.total < 64 * 2**20, f"the webhook read {sent.total} bytes of a 1 GiB reply"


@pytest.mark.asyncio
async def test_a_json_nesting_bomb_is_a_clear_error() -> None:
    async def v2(_request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 200_000)

    async with serve("127.0.0.1", {"/v2/{rest:.*}": v2}) as host:
        resolver = ImageConfigResolver(timeout=10)
        try:
            with pytest.raises(ImageConfigError, match="malformed registry answer"):
                await resolver.resolve(f"{host}/app:1")
        finally:
            await resolver.close()


@pytest.mark.asyncio
async def test_a_token_realm_on_another_host_gets_no_credentials() -> None:
    seen: list[str | None] = []

    async def token(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"token": "T"})

    async with serve("127.0.0.2", {"/token": token}) as thief:

        async def v2(_request: web.Request) -> web.Response:
            challenge = f'Bearer realm="http://{thief}/token",service="x"'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})

        async with serve("127.0.0.1", {"/v2/{rest:.*}": v2}) as host:
            resolver = ImageConfigResolver(timeout=10)
            try:
                with pytest.raises(ImageConfigError, match="on another host"):
                    await resolver.resolve(f"{host}/app:1", {host: Credential("u", "secret")})
            finally:
                await resolver.close()
    assert seen == [], "the pull secret was sent to a token service on another host"


@pytest.mark.asyncio
async def test_an_allowed_token_host_and_the_registrys_own_host_work() -> None:
    manifest, config, digest = _image(["/app"])
    expected = "Basic " + base64.b64encode(b"u:secret").decode()

    async def token(request: web.Request) -> web.Response:
        assert request.headers.get("Authorization") == expected
        return web.json_response({"token": "T"})

    async with serve("127.0.0.2", {"/token": token}) as auth:

        async def v2(request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != "Bearer T":
                challenge = f'Bearer realm="http://{auth}/token"'
                return web.Response(status=401, headers={"WWW-Authenticate": challenge})
            rest = request.match_info["rest"]
            return web.Response(body=config if rest.endswith(digest) else manifest)

        async with serve("127.0.0.1", {"/v2/{rest:.*}": v2}) as host:
            resolver = ImageConfigResolver(timeout=10, token_hosts={host: ("127.0.0.2",)})
            try:
                argv = await resolver.resolve(f"{host}/app:1", {host: Credential("u", "secret")})
            finally:
                await resolver.close()
    assert argv.entrypoint == ("/app",)


@pytest.mark.asyncio
async def test_a_redirect_to_another_host_carries_no_credentials() -> None:
    manifest, config, digest = _image(["/served-by-cdn"])
    cdn_auth: list[str | None] = []

    async def blob(request: web.Request) -> web.Response:
        cdn_auth.append(request.headers.get("Authorization"))
        return web.Response(body=config)

    async with serve("127.0.0.2", {"/blob": blob}) as cdn:

        async def v2(request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != "Basic " + base64.b64encode(b"u:p").decode():
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})
            if request.match_info["rest"].endswith(digest):
                raise web.HTTPTemporaryRedirect(f"http://{cdn}/blob")
            return web.Response(body=manifest)

        async with serve("127.0.0.1", {"/v2/{rest:.*}": v2}) as host:
            resolver = ImageConfigResolver(timeout=10)
            try:
                argv = await resolver.resolve(f"{host}/app:1", {host: Credential("u", "p")})
            finally:
                await resolver.close()
    assert argv.entrypoint == ("/served-by-cdn",)
    assert cdn_auth == [None]


@pytest.mark.asyncio
async def test_a_digest_from_the_registry_cannot_steer_the_url() -> None:
    index = json.dumps(
        {
            "manifests": [
                {"digest": "../../../admin", "platform": {"os": "linux", "architecture": "amd64"}}
            ]
        }
    ).encode()

    async def v2(_request: web.Request) -> web.Response:
        return web.Response(body=index)

    async with serve("127.0.0.1", {"/v2/{rest:.*}": v2}) as host:
        resolver = ImageConfigResolver(timeout=10)
        try:
            with pytest.raises(ImageConfigError, match="malformed digest"):
                await resolver.resolve(f"{host}/app:1")
        finally:
            await resolver.close()


@pytest_asyncio.fixture
async def hanging_registry() -> AsyncIterator[str]:
    """Accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    held: list[socket.socket] = []
    stop = asyncio.Event()

    async def accept() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            conn, _ = await loop.sock_accept(listener)
            held.append(conn)

    task = asyncio.create_task(accept())
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for conn in held:
            conn.close()
        listener.close()


@pytest.mark.asyncio
async def test_admission_answers_within_its_deadline_when_the_registry_hangs(
    hanging_registry: str, make_pod: Any
) -> None:
    op = OperatorSettings(admission_deadline_seconds=1.5, registry_timeout_seconds=60)
    state = WebhookState(
        op=op,
        resolver=ImageConfigResolver(timeout=op.registry_timeout_seconds),
        slots=SlotBook(5),
        secrets=PullSecrets("podckpt-system:podckpt-webhook"),
    )
    pod = make_pod(
        name="solo",
        labels={"memverge.ai/checkpoint-mode": "true"},
        annotations={"memverge.ai/checkpoint-storage-volume": "ckpt"},
        volumes=[{"name": "ckpt", "emptyDir": {}}],
        containers=[{"name": "app", "image": f"{hanging_registry}/app:1"}],
    )
    review: Any = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "namespace": "ns",
            "object": pod,
        },
    }
    try:
        # The API server gives up after timeoutSeconds (10 in config/); the answer must come
        # well before, whatever the registry does.
        answer = await asyncio.wait_for(admit(state, review), timeout=8)
    finally:
        await state.resolver.close()
    response = answer["response"]
    assert response["allowed"] is False
    assert "did not finish within 1.5 s" in response["status"]["message"]
