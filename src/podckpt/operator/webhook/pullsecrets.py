"""The pod's pull Secrets, read the way that keeps the webhook from being a deputy.

The webhook reads a pull Secret to fetch an image config from a private registry. It reads:

- only Secrets of the pod's own namespace, named in the pod's `imagePullSecrets` (the
  ServiceAccount admission plugin has already copied the service account's ones there);
- only where the namespace granted it: the webhook's ClusterRole has no access to Secrets at
  all. A namespace that wants argv resolution from a private registry binds the ClusterRole
  `podckpt-webhook-pull-secrets` to the webhook's service account in that namespace (a
  RoleBinding; a Role with `resourceNames` narrows it to named Secrets). So a forged
  AdmissionReview that names another namespace cannot make the webhook read that namespace's
  Secrets unless that namespace opted in (docs/security.md, "The webhook is not a deputy");
- only Secrets of the two docker-config types (never an Opaque or token Secret that happens
  to be named in `imagePullSecrets`).

A Secret the webhook may not read is a clear denial that says how to grant it or avoid it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from podckpt.operator.kube.api import ApiError, KubeAPI, namespaced

from .registryhttp import DOCKER_HUB, HUB_ALIASES, Credential

#: The ClusterRole a namespace binds to let the webhook read its pull Secrets (config/rbac).
GRANT_CLUSTER_ROLE = "podckpt-webhook-pull-secrets"
DOCKER_CONFIG_TYPES = frozenset({"kubernetes.io/dockerconfigjson", "kubernetes.io/dockercfg"})
#: A Secret read (or found missing) is reused this long: admissions of a Deployment's pods
#: come in bursts.
TTL_SECONDS = 30.0


class PullSecretError(Exception):
    """A pull Secret could not be used; the message is for the admission denial."""

    def __init__(self, message: str, code: int = 403) -> None:
        super().__init__(message)
        self.code = code


def grant_hint(namespace: str, webhook_account: str) -> str:
    return (
        f"let podckpt read this namespace's pull Secrets: kubectl -n {namespace} create"
        f" rolebinding podckpt-pull-secrets --clusterrole={GRANT_CLUSTER_ROLE}"
        f" --serviceaccount={webhook_account}"
    )


class PullSecrets:
    """Reads and briefly caches pull Secrets, per (namespace, name)."""

    def __init__(self, webhook_account: str, ttl: float = TTL_SECONDS) -> None:
        #: `namespace:name` of the webhook's service account, for the grant hint.
        self.webhook_account = webhook_account
        self._ttl = ttl
        self._cache: dict[tuple[str, str], tuple[float, Mapping[str, Any] | None]] = {}

    async def credentials(
        self,
        api: KubeAPI | None,
        namespace: str,
        spec: Mapping[str, Any],
        *,
        refused: list[PullSecretError] | None = None,
    ) -> dict[str, Credential]:
        """Registry host -> credential from the pod's `imagePullSecrets`, in its namespace.

        A Secret podckpt may not read (403: no grant in this namespace) raises, or, with
        `refused`, is left out and recorded there: many pods carry pull Secrets (copied from
        their ServiceAccount) for images that need none, and those must not be denied for a
        Secret nobody needed. The caller denies only if the registry then asks for one."""
        secrets = []
        for ref in spec.get("imagePullSecrets") or ():
            name = ref.get("name") if isinstance(ref, Mapping) else None
            if not name:
                continue
            try:
                body = await self._read(api, namespace, str(name))
            except PullSecretError as exc:
                if refused is None or exc.code != 403:
                    raise
                refused.append(exc)
                continue
            if body is not None:
                secrets.append(body)
        return credentials_from_secrets(secrets)

    async def _read(
        self, api: KubeAPI | None, namespace: str, name: str
    ) -> Mapping[str, Any] | None:
        now = time.monotonic()
        cached = self._cache.get((namespace, name))
        if cached is not None and cached[0] > now:
            return cached[1]
        body: Mapping[str, Any] | None = None
        if api is not None:
            try:
                body = await api.get(namespaced("secrets", namespace, name))
            except ApiError as exc:
                if exc.status == 403:
                    raise PullSecretError(
                        f"podckpt may not read imagePullSecret {name} in namespace {namespace}"
                        " (needed to read the image's ENTRYPOINT/CMD from its registry). Set"
                        " `command` on the container, or "
                        + grant_hint(namespace, self.webhook_account)
                    ) from None
                if not exc.not_found:
                    raise PullSecretError(
                        f"podckpt: cannot read imagePullSecret {name}: {exc}", code=500
                    ) from None
        if body is not None and body.get("type") not in DOCKER_CONFIG_TYPES:
            body = None  # not a pull secret: never used as one
        self._cache[(namespace, name)] = (now + self._ttl, body)
        if len(self._cache) > 4096:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        return body


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
        except (ValueError, binascii.Error, AttributeError):
            continue
        if not isinstance(auths, Mapping):
            continue
        for key, entry in auths.items():
            host = _host_of(str(key))
            credential = _credential(entry) if isinstance(entry, Mapping) else None
            if credential is not None and host not in found:
                found[host] = credential
    return found


def _host_of(key: str) -> str:
    host = re.sub(r"^https?://", "", key).split("/", 1)[0]
    return DOCKER_HUB if host in HUB_ALIASES else host


def _credential(entry: Mapping[str, Any]) -> Credential | None:
    if entry.get("username") is not None and entry.get("password") is not None:
        return Credential(str(entry["username"]), str(entry["password"]))
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, binascii.Error, TypeError):
            return None
        return Credential(user, password)
    return None
