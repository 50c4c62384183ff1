"""A small async client of the Kubernetes API for what kopf does not do for us: reading
Secrets and ReplicaSets, creating PVCs, listing and reading logs.

It is built from the same credentials as kopf (`kopf.ConnectionInfo`, obtained in the login
handler), so both clients act as the same service account with the same RBAC. Like client-go
and kopf, it logs in again when its token may have changed: at most every
`REFRESH_SECONDS` (the kubelet rotates a projected service-account token file well before it
expires) and at once when the API server answers 401 (a token revoked or expired), then the
request is retried once.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import kopf

#: `ApiError.reason` when the API server did not answer (connection refused, reset, timeout).
UNREACHABLE = "Unreachable"


class ApiError(Exception):
    """The API server answered with an error status, or (status 503, reason `UNREACHABLE`)
    did not answer."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}: {message}")

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def transient(self) -> bool:
        return self.status in (429, 500, 502, 503, 504)


logger = logging.getLogger(__name__)

#: A token is re-read at most this often without a 401 (client-go re-reads the projected
#: service-account token file every minute).
REFRESH_SECONDS = 60.0

Login = Callable[[], "kopf.ConnectionInfo | None"]


def _auth_headers(info: kopf.ConnectionInfo) -> dict[str, str]:
    headers = dict(info.as_http_headers())
    headers.setdefault("User-Agent", "podckpt")
    if info.username and info.password:
        headers["Authorization"] = aiohttp.encode_basic_auth(info.username, info.password)
    return headers


class KubeAPI:
    """GET/POST/PATCH against the API server with kopf's credentials.

    `login` (the operator's login handler) is called again for fresh credentials: when the
    API server refuses the token (401) and every `refresh_seconds`."""

    def __init__(
        self,
        info: kopf.ConnectionInfo,
        *,
        timeout: float = 10.0,
        login: Login | None = None,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        self._server = info.server.rstrip("/")
        self._headers = _auth_headers(info)
        self._login = login
        self._refresh_seconds = refresh_seconds
        self._logged_in = time.monotonic()
        self.relogins = 0
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    def _relogin(self, why: str) -> bool:
        """New credentials from the login handler; False when there are none or no change."""
        if self._login is None:
            return False
        self._logged_in = time.monotonic()
        info = self._login()
        if info is None:
            logger.warning("re-login (%s): no credentials", why)
            return False
        headers = _auth_headers(info)
        changed = headers != self._headers
        self._headers = headers
        if changed:
            self.relogins += 1
            logger.info("re-login (%s): new credentials", why)
        return changed

    async def close(self) -> None:
        await self._session.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        content_type: str = "application/json",
        text: bool = False,
    ) -> Any:
        url = self._server + path
        if params:
            url += "?" + urlencode(params)
        data = None if body is None else json.dumps(body)
        if time.monotonic() - self._logged_in > self._refresh_seconds:
            self._relogin("periodic")
        # A GET is sent again once when the connection breaks: a pooled keep-alive connection
        # that the API server closed (it restarted) fails only the request that reuses it.
        # A 401 is sent again once with fresh credentials (a rotated token).
        broken_attempts = 2 if method == "GET" else 1
        relogged = False
        attempt = 0
        while True:
            headers = dict(self._headers)
            if data is not None:
                headers["Content-Type"] = content_type
            try:
                status, reason, payload = await self._send(method, url, data, headers)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                attempt += 1
                if attempt < broken_attempts:
                    continue
                # No answer at all: as transient as a 503 (the API server restarts, or a
                # load balancer in front of it switches), so callers retry it alike.
                raise ApiError(503, UNREACHABLE, f"{method} {path}: {exc!r}") from exc
            if status == 401 and not relogged and self._relogin("401 Unauthorized"):
                relogged = True
                continue
            break
        if status >= 400:
            message = payload[:500]
            try:
                answer = json.loads(payload)
                reason = answer.get("reason", reason)
                message = answer.get("message", message)
            except (ValueError, AttributeError):
                pass
            raise ApiError(status, reason, message)
        return payload if text else json.loads(payload)

    async def _send(
        self, method: str, url: str, data: str | None, headers: dict[str, str]
    ) -> tuple[int, str, str]:
        async with self._session.request(method, url, data=data, headers=headers) as response:
            return response.status, response.reason or "", await response.text()

    async def get(self, path: str, **params: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", path, params=params)
        return result

    async def get_text(self, path: str, **params: str) -> str:
        result: str = await self._request("GET", path, params=params, text=True)
        return result

    async def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("POST", path, body=body)
        return result

    async def json_patch(self, path: str, operations: list[dict[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "PATCH", path, body=operations, content_type="application/json-patch+json"
        )
        return result

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "PATCH", path, body=body, content_type="application/merge-patch+json"
        )
        return result


def namespaced(kind_path: str, namespace: str, name: str | None = None) -> str:
    """`/api/v1/namespaces/NS/<kind_path>[/NAME]` for core kinds; pass `apis/GROUP/VERSION/...`
    prefixes through `kind_path` with a leading `/apis/...` for others."""
    prefix, _, plural = kind_path.rpartition("/")
    base = prefix or "/api/v1"
    path = f"{base}/namespaces/{quote(namespace)}/{plural}"
    return f"{path}/{quote(name)}" if name else path


def event_name(obj_name: str, fact: str) -> str:
    """A deterministic Event name for one fact about an object: posting it twice (a second
    replica, a restart that sees the object again) is refused by the API server as a
    conflict instead of showing the user the same fact twice."""
    digest = hashlib.sha256(fact.encode()).hexdigest()[:16]
    return f"{obj_name[:200]}.{digest}"


def event_manifest(
    obj: Mapping[str, Any],
    *,
    type: str,
    reason: str,
    message: str,
    component: str,
    fact: str | None = None,
) -> dict[str, Any]:
    """A core/v1 Event about `obj` (for posts outside kopf's handler context). With `fact`
    the Event has a deterministic name (`event_name`), so that the fact is posted once."""
    meta = obj.get("metadata") or {}
    now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    name = meta.get("name", "object")
    naming = {"name": event_name(name, fact)} if fact is not None else {"generateName": f"{name}."}
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {**naming, "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion", "v1"),
            "kind": obj.get("kind", ""),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "type": type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


async def post_event_once(api: KubeAPI, event: Mapping[str, Any]) -> bool:
    """Post an Event with a deterministic name; False when it exists already (posted by
    another replica or before a restart)."""
    namespace = event["metadata"]["namespace"]
    try:
        await api.post(namespaced("events", namespace), event)
    except ApiError as exc:
        if exc.conflict:
            return False
        raise
    return True
