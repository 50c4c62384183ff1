"""Reading ENTRYPOINT/CMD from a registry: references, pull secrets, token auth, indexes,
caches. The registry here is a small in-process implementation of the distribution API with
bearer-token auth (the real `docker-registry` is used by tests/operator)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from podckpt.operator.webhook.imageconfig import (
    ImageConfigError,
    ImageConfigResolver,
    parse_reference,
)
from podckpt.operator.webhook.pullsecrets import credentials_from_secrets
from podckpt.operator.webhook.registryhttp import Credential


@pytest.mark.parametrize(
    ("image", "registry", "repository", "reference"),
    [
        ("nginx", "docker.io", "library/nginx", "latest"),
        ("nginx:1.27", "docker.io", "library/nginx", "1.27"),
        ("user/app", "docker.io", "user/app", "latest"),
        ("localhost:5000/app:v1", "localhost:5000", "app", "v1"),
        ("ghcr.io/org/app/sub:2", "ghcr.io", "org/app/sub", "2"),
        ("127.0.0.1:5000/a@sha256:" + "0" * 64, "127.0.0.1:5000", "a", "sha256:" + "0" * 64),
        ("index.docker.io/library/busybox", "docker.io", "library/busybox", "latest"),
    ],
)
def test_references(image: str, registry: str, repository: str, reference: str) -> None:
    ref = parse_reference(image)
    assert (ref.registry, ref.repository, ref.reference) == (registry, repository, reference)


def test_bad_reference() -> None:
    with pytest.raises(ImageConfigError):
        parse_reference("Upper/Case")


def _docker_config(auths: dict[str, Any]) -> dict[str, Any]:
    raw = json.dumps({"auths": auths}).encode()
    return {"data": {".dockerconfigjson": base64.b64encode(raw).decode()}}


def test_pull_secret_credentials() -> None:
    auth = base64.b64encode(b"bob:pw:with:colons").decode()
    secrets = [
        _docker_config({"https://index.docker.io/v1/": {"auth": auth}}),
        _docker_config({"reg.example:5000": {"username": "u", "password": "p"}}),
        _docker_config({"reg.example:5000": {"username": "later", "password": "x"}}),
        {"data": {"other": "x"}},
    ]
    found = credentials_from_secrets(secrets)
    assert found["docker.io"] == Credential("bob", "pw:with:colons")
    assert found["reg.example:5000"] == Credential("u", "p")


class FakeRegistry:
    """Distribution API with a token service; one multi-platform image `app:1`."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        config = json.dumps({"config": {"Entrypoint": ["/entry"], "Cmd": ["serve"]}}).encode()
        self.config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"digest": self.config_digest, "size": len(config)},
                "layers": [],
            }
        ).encode()
        self.manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [
                    {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
                    {
                        "digest": self.manifest_digest,
                        "platform": {"os": "linux", "architecture": "amd64"},
                    },
                ],
            }
        ).encode()
        self.blobs = {
            "manifests/1": index,
            f"manifests/{self.manifest_digest}": manifest,
            f"blobs/{self.config_digest}": config,
        }
        self.base = ""

    async def token(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Basic " + base64.b64encode(b"u:p").decode():
            return web.Response(status=401)
        assert request.query["scope"] == "repository:team/app:pull"
        return web.json_response({"token": "T", "expires_in": 300})

    async def v2(self, request: web.Request) -> web.Response:
        self.requests.append(request.match_info["rest"])
        if request.headers.get("Authorization") != "Bearer T":
            challenge = f'Bearer realm="{self.base}/token",service="fake"'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        rest = request.match_info["rest"].removeprefix("team/app/")
        if rest not in self.blobs:
            return web.Response(status=404)
        return web.Response(body=self.blobs[rest])


@pytest_asyncio.fixture
async def registry() -> AsyncIterator[tuple[FakeRegistry, str]]:
    fake = FakeRegistry()
    app = web.Application()
    app.router.add_get("/token", fake.token)
    app.router.add_get("/v2/{rest:.*}", fake.v2)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.base = f"http://127.0.0.1:{port}"
    yield fake, f"127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.asyncio
async def test_token_auth_index_and_cache(registry: tuple[FakeRegistry, str]) -> None:
    fake, host = registry
    resolver = ImageConfigResolver()
    creds = {host: Credential("u", "p")}
    try:
        config = await resolver.resolve(f"{host}/team/app:1", creds)
        assert (config.entrypoint, config.cmd) == (("/entry",), ("serve",))
        assert config.digest == fake.manifest_digest
        fetched = len(fake.requests)
        again = await resolver.resolve(f"{host}/team/app:1", creds)
        assert again == config
        assert len(fake.requests) == fetched, "a cached tag costs no registry round trip"
    finally:
        await resolver.close()


@pytest.mark.asyncio
async def test_without_credentials_access_is_denied(registry: tuple[FakeRegistry, str]) -> None:
    _fake, host = registry
    resolver = ImageConfigResolver()
    try:
        with pytest.raises(ImageConfigError, match="token service answered 401"):
            await resolver.resolve(f"{host}/team/app:1")
    finally:
        await resolver.close()


@pytest.mark.asyncio
async def test_missing_tag_and_unreachable_registry(registry: tuple[FakeRegistry, str]) -> None:
    _fake, host = registry
    resolver = ImageConfigResolver(timeout=2)
    creds = {host: Credential("u", "p")}
    try:
        with pytest.raises(ImageConfigError, match="not found"):
            await resolver.resolve(f"{host}/team/app:2", creds)
        with pytest.raises(ImageConfigError, match="unreachable"):
            await resolver.resolve("127.0.0.1:9/team/app:1")
    finally:
        await resolver.close()
