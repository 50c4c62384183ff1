"""Our API client logs in again when the API server refuses its token (a real HTTP server
stands in for the API server; tests/operator/test_reauth.py does it against the real one)."""

from __future__ import annotations

import kopf
import pytest
from aiohttp import web

from podckpt.operator.kube.api import ApiError, KubeAPI


@pytest.mark.asyncio
async def test_a_refused_token_is_replaced_and_the_request_retried() -> None:
    valid = {"token": "old"}
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        seen.append(auth)
        if auth != f"Bearer {valid['token']}":
            return web.json_response({"reason": "Unauthorized", "message": "no"}, status=401)
        return web.json_response({"items": []})

    app = web.Application()
    app.router.add_get("/api/v1/pods", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    current = {"token": "old"}
    logins: list[str] = []

    def login() -> kopf.ConnectionInfo:
        logins.append(current["token"])
        return kopf.ConnectionInfo(server=server, token=current["token"])

    api = KubeAPI(login(), login=login)
    try:
        assert await api.get("/api/v1/pods") == {"items": []}
        # The token is revoked and rotated: the next request is refused once, then retried.
        valid["token"] = current["token"] = "new"
        assert await api.get("/api/v1/pods") == {"items": []}
        assert seen[-2:] == ["Bearer old", "Bearer new"]
        assert api.relogins == 1
        # Refused with no new credentials: an error, not a loop.
        valid["token"] = "newer"
        with pytest.raises(ApiError) as info:
            await api.get("/api/v1/pods")
        assert info.value.status == 401
    finally:
        await api.close()
        await runner.cleanup()
