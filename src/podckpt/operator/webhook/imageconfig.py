"""ENTRYPOINT and CMD of an image, read from its registry (OCI distribution API).

Only the manifest and the config blob are fetched (a few KiB), never layers. Authentication:
the pod's imagePullSecrets (`kubernetes.io/dockerconfigjson` or `dockercfg`), basic or bearer
token challenge. Multi-platform images are resolved to the node platform configured in the
operator settings. Caches: a tag resolves to a digest for `tag_cache_seconds`, keyed by the
credentials used (so a pod cannot read an image config through another namespace's secret);
configs are kept by manifest digest (content addressed, never stale).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import dataclasses
import hashlib
import ipaddress
import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp

from .argv import ImageArgv

DOCKER_HUB = "docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
_HUB_ENDPOINT = "registry-1.docker.io"

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_INDEX_TYPES = MANIFEST_TYPES[0], MANIFEST_TYPES[2]
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class ImageConfigError(Exception):
    """The image config could not be read; the message says why, for the admission denial."""


@dataclasses.dataclass(frozen=True)
class ImageRef:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    @property
    def endpoint(self) -> str:
        return _HUB_ENDPOINT if self.registry == DOCKER_HUB else self.registry


def parse_reference(image: str) -> ImageRef:
    """Split an image reference the way the container runtime does (docker.io defaults)."""
    text = image.strip()
    if not text or any(c.isspace() for c in text):
        raise ImageConfigError(f"invalid image reference {image!r}")
    name, _, digest = text.partition("@")
    head, _, rest = name.partition("/")
    if rest and ("." in head or ":" in head or head == "localhost"):
        registry, path = head, rest
    else:
        registry, path = DOCKER_HUB, name
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
    tag: str | None = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, _, tag = path.rpartition(":")
    if registry == DOCKER_HUB and "/" not in path:
        path = "library/" + path
    if not path or path != path.lower():
        raise ImageConfigError(f"invalid image reference {image!r}")
    if not digest and not tag:
        tag = "latest"
    return ImageRef(registry, path, tag, digest or None)


@dataclasses.dataclass(frozen=True)
class Credential:
    username: str
    password: str


def credentials_from_secrets(secrets: Iterable[Mapping[str, Any]]) -> dict[str, Credential]:
    """Registry host -> credential, from pull Secrets (first secret wins, as the kubelet)."""
    found: dict[str, Credential] = {}
    for secret in secrets:
        data = secret.get("data") or {}
        try:
            if ".dockerconfigjson" in data:
                auths = json.loads(base64.b64decode(data[".dockerconfigjson"])).get("auths", {})
            elif ".dockercfg" in data:
                auths = json.loads(base64.b64decode(data[".dockercfg"]))
            else:
                continue
        except (ValueError, binascii.Error):
            continue
        for key, entry in (auths or {}).items():
            host = _host_of(key)
            credential = _credential(entry)
            if credential is not None and host not in found:
                found[host] = credential
    return found


def _host_of(key: str) -> str:
    host = re.sub(r"^https?://", "", key).split("/", 1)[0]
    return DOCKER_HUB if host in _HUB_ALIASES else host


def _credential(entry: Mapping[str, Any]) -> Credential | None:
    if entry.get("username") is not None and entry.get("password") is not None:
        return Credential(str(entry["username"]), str(entry["password"]))
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, binascii.Error):
            return None
        return Credential(user, password)
    return None


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


class ImageConfigResolver:
    """Reads and caches image configs; one per webhook process."""

    def __init__(
        self,
        *,
        insecure_registries: Iterable[str] = (),
        tag_cache_seconds: float = 300.0,
        cache_size: int = 2048,
        timeout: float = 8.0,
        platform: tuple[str, str] = ("linux", "amd64"),
    ) -> None:
        self._insecure = set(insecure_registries)
        self._tag_ttl = tag_cache_seconds
        self._cache_size = cache_size
        self._timeout = timeout
        self._platform = platform
        self._configs: collections.OrderedDict[str, ImageArgv] = collections.OrderedDict()
        self._tags: collections.OrderedDict[tuple[str, ...], tuple[float, str]] = (
            collections.OrderedDict()
        )
        self._tokens: dict[tuple[str, str, str], tuple[float, str]] = {}
        self._inflight: dict[tuple[str, ...], asyncio.Future[ImageArgv]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0  # registry round trips, for tests and metrics

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                headers={"User-Agent": "podckpt-webhook"},
            )
        return self._session

    async def resolve(
        self, image: str, credentials: Mapping[str, Credential] | None = None
    ) -> ImageArgv:
        """ENTRYPOINT/CMD of `image`; raises `ImageConfigError` with a user-facing reason."""
        ref = parse_reference(image)
        credential = (credentials or {}).get(ref.registry)
        who = _fingerprint(credential)
        key = (ref.registry, ref.repository, ref.reference, who)
        now = time.monotonic()
        cached = self._tags.get(key)
        if cached is not None and cached[0] > now and cached[1] in self._configs:
            self._configs.move_to_end(cached[1])
            return self._configs[cached[1]]
        # Concurrent admissions of the same image share one registry round trip.
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ImageArgv] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._fetch(ref, credential)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        else:
            future.set_result(result)
            self._remember(key, result)
            return result
        finally:
            del self._inflight[key]

    def _remember(self, key: tuple[str, ...], config: ImageArgv) -> None:
        self._configs[config.digest] = config
        self._configs.move_to_end(config.digest)
        ttl = self._tag_ttl if key[2] != config.digest else 365 * 86400.0
        self._tags[key] = (time.monotonic() + ttl, config.digest)
        self._tags.move_to_end(key)
        while len(self._configs) > self._cache_size:
            self._configs.popitem(last=False)
        while len(self._tags) > self._cache_size:
            self._tags.popitem(last=False)

    async def _fetch(self, ref: ImageRef, credential: Credential | None) -> ImageArgv:
        name = f"{ref.registry}/{ref.repository}:{ref.reference}"
        try:
            manifest, digest = await self._manifest(ref, ref.reference, credential)
            if manifest.get("mediaType") in _INDEX_TYPES or "manifests" in manifest:
                chosen = self._choose_platform(manifest, name)
                manifest, digest = await self._manifest(ref, chosen, credential)
            config_digest = (manifest.get("config") or {}).get("digest")
            if not config_digest:
                raise ImageConfigError(f"image {name}: manifest has no config (schema 1?)")
            cached = self._configs.get(digest)
            if cached is not None:
                return cached
            raw = await self._get(ref, f"blobs/{config_digest}", credential, accept=None)
            config = json.loads(raw).get("config") or {}
        except aiohttp.ClientError as exc:
            raise ImageConfigError(f"image {name}: registry unreachable ({exc})") from None
        except TimeoutError:
            raise ImageConfigError(f"image {name}: registry timed out") from None
        except ValueError as exc:
            raise ImageConfigError(f"image {name}: malformed registry answer ({exc})") from None
        return ImageArgv(
            tuple(config.get("Entrypoint") or ()), tuple(config.get("Cmd") or ()), digest
        )

    def _choose_platform(self, index: Mapping[str, Any], name: str) -> str:
        want_os, want_arch = self._platform
        for entry in index.get("manifests") or ():
            platform = entry.get("platform") or {}
            if platform.get("os") == want_os and platform.get("architecture") == want_arch:
                return str(entry["digest"])
        raise ImageConfigError(f"image {name}: no manifest for platform {want_os}/{want_arch}")

    async def _manifest(
        self, ref: ImageRef, reference: str, credential: Credential | None
    ) -> tuple[dict[str, Any], str]:
        raw = await self._get(
            ref, f"manifests/{reference}", credential, accept=", ".join(MANIFEST_TYPES)
        )
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        manifest: dict[str, Any] = json.loads(raw)
        return manifest, digest

    def _base(self, ref: ImageRef) -> str:
        insecure = ref.registry in self._insecure or _is_loopback(ref.registry)
        return f"{'http' if insecure else 'https'}://{ref.endpoint}/v2/{ref.repository}/"

    async def _get(
        self, ref: ImageRef, path: str, credential: Credential | None, *, accept: str | None
    ) -> bytes:
        url = self._base(ref) + path
        scope = f"repository:{ref.repository}:pull"
        headers = {"Accept": accept} if accept else {}
        authorization = self._cached_token(ref, scope, credential)
        for _attempt in range(2):
            if authorization:
                headers["Authorization"] = authorization
            self.fetches += 1
            async with self._http().get(url, headers=headers) as response:
                if response.status == 401 and _attempt == 0:
                    challenge = response.headers.get("WWW-Authenticate", "")
                    authorization = await self._authorize(ref, challenge, scope, credential)
                    continue
                if response.status == 404:
                    raise ImageConfigError(
                        f"image {ref.registry}/{ref.repository}:{ref.reference}: not found"
                    )
                if response.status in (401, 403):
                    raise ImageConfigError(
                        f"image {ref.registry}/{ref.repository}: access denied"
                        + ("" if credential else " (no imagePullSecret for this registry)")
                    )
                if response.status >= 400:
                    raise ImageConfigError(
                        f"image {ref.registry}/{ref.repository}: registry answered"
                        f" {response.status}"
                    )
                return await response.read()
        raise ImageConfigError(f"image {ref.registry}/{ref.repository}: authentication failed")

    def _cached_token(self, ref: ImageRef, scope: str, credential: Credential | None) -> str:
        entry = self._tokens.get((ref.registry, scope, _fingerprint(credential)))
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        return ""

    async def _authorize(
        self, ref: ImageRef, challenge: str, scope: str, credential: Credential | None
    ) -> str:
        scheme, _, rest = challenge.partition(" ")
        basic = (
            aiohttp.encode_basic_auth(credential.username, credential.password)
            if credential
            else None
        )
        if scheme.lower() == "basic":
            if basic is None:
                raise ImageConfigError(
                    f"image {ref.registry}/{ref.repository}: the registry needs credentials"
                    " (no imagePullSecret for this registry)"
                )
            return basic
        if scheme.lower() != "bearer":
            raise ImageConfigError(f"registry {ref.registry}: unsupported auth {scheme!r}")
        params = dict(_CHALLENGE_PARAM.findall(rest))
        realm = params.pop("realm", "")
        if not realm:
            raise ImageConfigError(f"registry {ref.registry}: bearer challenge without realm")
        query = {"scope": params.get("scope", scope)}
        if "service" in params:
            query["service"] = params["service"]
        token_headers = {"Authorization": basic} if basic else {}
        async with self._http().get(realm, params=query, headers=token_headers) as response:
            if response.status >= 400:
                raise ImageConfigError(
                    f"image {ref.registry}/{ref.repository}: token service answered"
                    f" {response.status}"
                )
            body = await response.json(content_type=None)
        token = body.get("token") or body.get("access_token")
        if not token:
            raise ImageConfigError(f"registry {ref.registry}: token service gave no token")
        expires = float(body.get("expires_in") or 60)
        authorization = f"Bearer {token}"
        self._tokens[(ref.registry, scope, _fingerprint(credential))] = (
            time.monotonic() + max(expires - 10, 5),
            authorization,
        )
        return authorization


def _fingerprint(credential: Credential | None) -> str:
    if credential is None:
        return "anonymous"
    text = f"{credential.username}\0{credential.password}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]
