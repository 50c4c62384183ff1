"""ENTRYPOINT and CMD of an image, read from its registry (OCI distribution API).

Only the manifest and the config blob are fetched (a few KiB), never layers; every reply is
size-limited and token realms and redirects are checked (`registryhttp`). Authentication:
the pod's imagePullSecrets (`kubernetes.io/dockerconfigjson` or `dockercfg`), basic or bearer
token challenge. Multi-platform images are resolved to the node platform configured in the
operator settings. Caches: a tag resolves to a digest for `tag_cache_seconds`, keyed by the
credentials used (so a pod cannot read an image config through another namespace's secret);
configs are kept by manifest digest (content addressed, never stale).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp

from . import registryhttp
from .argv import ImageArgv
from .registryhttp import DOCKER_HUB, HUB_ALIASES, Credential, RegistryReplyError

_HUB_ENDPOINT = "registry-1.docker.io"

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_INDEX_TYPES = MANIFEST_TYPES[0], MANIFEST_TYPES[2]
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


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
    if registry in HUB_ALIASES:
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
        max_reply_bytes: int = registryhttp.DEFAULT_MAX_BYTES,
        token_hosts: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self._insecure = set(insecure_registries)
        self._max_bytes = max_reply_bytes
        self._token_hosts = dict(token_hosts or {})
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
        # Concurrent admissions of the same image share one registry round trip. The fetch is
        # a task of its own: an admission that gives up (its deadline) does not cancel it for
        # the others, and each request's own timeout bounds it.
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(ref, credential))
            self._inflight[key] = pending
            pending.add_done_callback(lambda task: self._fetched(key, task))
        return await asyncio.shield(pending)

    def _fetched(self, key: tuple[str, ...], task: asyncio.Future[ImageArgv]) -> None:
        self._inflight.pop(key, None)
        if task.cancelled():
            return
        if task.exception() is None:  # also marks a failure as retrieved
            self._remember(key, task.result())

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
            config_ref = manifest.get("config")
            config_digest = config_ref.get("digest") if isinstance(config_ref, dict) else None
            if not config_digest:
                raise ImageConfigError(f"image {name}: manifest has no config (schema 1?)")
            _check_digest(config_digest, name)
            cached = self._configs.get(digest)
            if cached is not None:
                return cached
            raw = await self._get(ref, f"blobs/{config_digest}", credential, accept=None)
            if "sha256:" + hashlib.sha256(raw).hexdigest() != config_digest:
                raise ImageConfigError(f"image {name}: config blob does not match its digest")
            document = json.loads(raw)
            config = document.get("config") if isinstance(document, dict) else None
            return _image_argv(config or {}, digest, name)
        except RegistryReplyError as exc:
            raise ImageConfigError(f"image {name}: {exc}") from None
        except aiohttp.ClientError as exc:
            raise ImageConfigError(f"image {name}: registry unreachable ({exc})") from None
        except TimeoutError:
            raise ImageConfigError(f"image {name}: registry timed out") from None
        except (ValueError, RecursionError) as exc:  # RecursionError: a JSON nesting bomb
            raise ImageConfigError(f"image {name}: malformed registry answer ({exc})") from None

    def _choose_platform(self, index: Mapping[str, Any], name: str) -> str:
        want_os, want_arch = self._platform
        for entry in index.get("manifests") or ():
            platform = entry.get("platform") or {}
            if platform.get("os") == want_os and platform.get("architecture") == want_arch:
                return _check_digest(entry.get("digest"), name)
        raise ImageConfigError(f"image {name}: no manifest for platform {want_os}/{want_arch}")

    async def _manifest(
        self, ref: ImageRef, reference: str, credential: Credential | None
    ) -> tuple[dict[str, Any], str]:
        raw = await self._get(
            ref, f"manifests/{reference}", credential, accept=", ".join(MANIFEST_TYPES)
        )
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise ImageConfigError(f"manifest {reference} does not match its digest")
        manifest = json.loads(raw)
        if not isinstance(manifest, dict):
            raise ImageConfigError(f"manifest {reference} is not a JSON object")
        return manifest, digest

    def _plain_http(self, ref: ImageRef) -> bool:
        return ref.registry in self._insecure or registryhttp.is_loopback(ref.registry)

    def _base(self, ref: ImageRef) -> str:
        insecure = self._plain_http(ref)
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
            status, reply_headers, body = await registryhttp.get(
                self._http(), url, headers=headers, max_bytes=self._max_bytes, what=path
            )
            if status == 401 and _attempt == 0:
                challenge = reply_headers.get("WWW-Authenticate", "")
                authorization = await self._authorize(ref, challenge, scope, credential)
                continue
            if status == 404:
                raise ImageConfigError(
                    f"image {ref.registry}/{ref.repository}:{ref.reference}: not found"
                )
            if status in (401, 403):
                raise ImageConfigError(
                    f"image {ref.registry}/{ref.repository}: access denied"
                    + ("" if credential else " (no imagePullSecret for this registry)")
                )
            if status >= 400:
                raise ImageConfigError(
                    f"image {ref.registry}/{ref.repository}: registry answered {status}"
                )
            return body
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
        registryhttp.check_realm(
            realm,
            registry=ref.registry,
            endpoint=ref.endpoint,
            allowed_hosts=self._token_hosts,
            insecure=self._plain_http(ref),
        )
        query = {"scope": params.get("scope", scope)}
        if "service" in params:
            query["service"] = params["service"]
        token_headers = {"Authorization": basic} if basic else {}
        status, _headers, raw = await registryhttp.get(
            self._http(),
            realm,
            params=query,
            headers=token_headers,
            max_bytes=self._max_bytes,
            what="token service",
        )
        if status >= 400:
            raise ImageConfigError(
                f"image {ref.registry}/{ref.repository}: token service answered {status}"
            )
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ImageConfigError(f"registry {ref.registry}: malformed token answer")
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


def _check_digest(value: object, name: str) -> str:
    """A digest from a registry reply goes into a URL path: only `sha256:<64 hex>`."""
    if not isinstance(value, str) or not _DIGEST.match(value):
        raise ImageConfigError(f"image {name}: malformed digest {str(value)[:80]!r}")
    return value


def _strings(value: object, field: str, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageConfigError(f"image {name}: config {field} is not a list of strings")
    return tuple(value)


def _image_argv(config: Mapping[str, Any], digest: str, name: str) -> ImageArgv:
    if not isinstance(config, Mapping):
        raise ImageConfigError(f"image {name}: config is not a JSON object")
    user = config.get("User") or ""
    if not isinstance(user, str):
        raise ImageConfigError(f"image {name}: config User is not a string")
    return ImageArgv(
        _strings(config.get("Entrypoint"), "Entrypoint", name),
        _strings(config.get("Cmd"), "Cmd", name),
        digest,
        user=user,
    )


def _fingerprint(credential: Credential | None) -> str:
    if credential is None:
        return "anonymous"
    text = f"{credential.username}\0{credential.password}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]
