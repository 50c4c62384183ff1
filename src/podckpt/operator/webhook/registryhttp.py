"""HTTP to container registries, bounded: what a registry may make the webhook do.

The webhook talks to registries that pod authors choose (an image reference is user input)
and it is fail-closed for opted-in pods, so a hostile or broken registry must not be able to:

- **exhaust its memory**: every reply is read up to `max_bytes` (a `Content-Length` above it
  is refused before the body is read; a body that grows past it is cut off), so a 1 GiB
  "manifest" costs at most that much;
- **send credentials elsewhere**: a bearer challenge names the token service (`realm`) that
  gets the pull secret's username and password; the realm must be on the registry's own host,
  or on a host the operator allows for that registry (`registry_token_hosts`, e.g. Docker
  Hub's `auth.docker.io`); redirects are followed by hand, at most `MAX_REDIRECTS`, never
  from HTTPS to plain HTTP, and never with the `Authorization` header to another host
  (blob downloads are commonly redirected to a CDN or object store);
- **hold admission**: each request has a total timeout, and the handler bounds the whole
  resolution by the admission deadline (`handlers.py`).

What it cannot prevent is inherent in pulling images by name: the webhook connects to the host
a pod names, as the kubelet does (documented in docs/security.md).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

#: Replies above this are refused (manifests, indexes, configs and token answers are KiBs).
DEFAULT_MAX_BYTES = 4 * 2**20
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)

#: Docker Hub as image references name it, and its other spellings.
DOCKER_HUB = "docker.io"
HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
#: Token services on another host than their registry, allowed by default. Docker Hub's
#: registry is registry-1.docker.io, its token service auth.docker.io.
DEFAULT_TOKEN_HOSTS: dict[str, tuple[str, ...]] = {DOCKER_HUB: ("auth.docker.io",)}


@dataclasses.dataclass(frozen=True)
class Credential:
    """A registry login from a pull Secret."""

    username: str
    password: str

    def __repr__(self) -> str:  # never in a log line or a traceback
        return f"Credential(username={self.username!r}, password=<hidden>)"


class RegistryReplyError(Exception):
    """The registry's reply was refused; the message is for the admission denial."""


def is_loopback(host: str) -> bool:
    """`localhost`, `127.0.0.0/8` or `::1`, with or without a port."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.scheme, (parts.hostname or "").lower(), parts.port or default)


async def read_bounded(response: aiohttp.ClientResponse, max_bytes: int, what: str) -> bytes:
    """The body of `response`, refusing more than `max_bytes`."""
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise RegistryReplyError(f"{what}: reply of {declared} bytes, more than {max_bytes}")
    body = bytearray()
    async for chunk in response.content.iter_chunked(65536):
        body += chunk
        if len(body) > max_bytes:
            raise RegistryReplyError(f"{what}: reply larger than {max_bytes} bytes")
    return bytes(body)


async def get(
    session: aiohttp.ClientSession,
    url: str,
    *,
    headers: Mapping[str, str],
    max_bytes: int,
    what: str,
    params: Mapping[str, str] | None = None,
) -> tuple[int, Mapping[str, str], bytes]:
    """GET `url`, following redirects safely; (status, headers, body) of the last reply.

    The body of an error reply is read too (bounded), so the connection can be reused."""
    current = url
    if params:
        current += ("&" if urlsplit(url).query else "?") + urlencode(dict(params))
    origin = _origin(current)
    sent = dict(headers)
    for _hop in range(MAX_REDIRECTS + 1):
        async with session.get(current, headers=sent, allow_redirects=False) as response:
            if response.status in _REDIRECTS and "Location" in response.headers:
                target = urljoin(current, response.headers["Location"])
                scheme = urlsplit(target).scheme
                if scheme not in ("http", "https"):
                    raise RegistryReplyError(f"{what}: redirect to a {scheme!r} URL")
                if urlsplit(current).scheme == "https" and scheme != "https":
                    raise RegistryReplyError(f"{what}: redirect from HTTPS to plain HTTP")
                if _origin(target) != origin:
                    # Credentials never follow a redirect to another host (CDN, object store).
                    sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
                current = target
                continue
            body = await read_bounded(response, max_bytes, what)
            return response.status, dict(response.headers), body
    raise RegistryReplyError(f"{what}: more than {MAX_REDIRECTS} redirects")


def check_realm(
    realm: str,
    *,
    registry: str,
    endpoint: str,
    allowed_hosts: Mapping[str, tuple[str, ...]],
    insecure: bool,
) -> str:
    """`realm` if the registry may send our credentials there, else RegistryReplyError.

    Allowed: the registry's own host (any port: token services often listen beside the
    registry), or a host listed for this registry in `allowed_hosts` (keyed by the registry
    as written in image references, `docker.io` for Docker Hub). HTTPS is required unless
    the registry itself is reached over plain HTTP (an insecure or loopback registry)."""
    parts = urlsplit(realm)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise RegistryReplyError(f"registry {registry}: token realm {realm!r} is not a URL")
    if parts.scheme == "http" and not insecure:
        raise RegistryReplyError(
            f"registry {registry}: token realm {realm!r} is plain HTTP; the registry is HTTPS"
        )
    own = (urlsplit(f"//{endpoint}").hostname or "").lower()
    listed = (*DEFAULT_TOKEN_HOSTS.get(registry, ()), *allowed_hosts.get(registry, ()))
    allowed = {own, *(h.lower() for h in listed)}
    if host not in allowed:
        raise RegistryReplyError(
            f"registry {registry}: token realm {realm!r} is on another host ({host}); the"
            " webhook sends pull credentials only to the registry's own host. An operator can"
            f' allow it with PODCKPT_REGISTRY_TOKEN_HOSTS=\'{{"{registry}": ["{host}"]}}\''
        )
    return realm
