"""The namespace's store key: a Secret the agents authenticate checkpoint manifests with.

One key per namespace (docs/security.md, "Checkpoints at rest"): a checkpoint volume is bound
to one namespace, so a volume read or written outside it (a reused PersistentVolume, a copied
backup, the storage system itself) cannot produce a manifest that an agent of this namespace
accepts. The controller only *creates* it (RBAC `create` on secrets, never `get`/`list`): an
existing one answers 409 and is left alone, so the controller can neither read a key nor mint
a usable service-account token. The webhook mounts it into the bundle init container only.
The Secret is immutable: changing the key would make every existing checkpoint unrestorable;
to rotate it, delete it (the next new pod gets a new one, and checkpoints start over).
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any

from podckpt.api import contract
from podckpt.operator.settings import OperatorSettings

KEY_BYTES = 32
#: A namespace's key is created at most once per this many seconds (pods come in bursts).
RECHECK_SECONDS = 30.0


def build_store_key_secret(namespace: str, op: OperatorSettings) -> dict[str, Any]:
    key = base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": op.store_key_secret,
            "namespace": namespace,
            "labels": {op.annotation("managed-by"): "podckpt"},
            "annotations": {
                op.annotation("purpose"): "authenticates this namespace's checkpoints"
                " (HMAC-SHA256 of their manifests); deleting it makes them unrestorable",
            },
        },
        "type": "Opaque",
        "immutable": True,
        "data": {contract.STORE_KEY_SECRET_KEY: key},
    }


class KeyTracker:
    """Namespaces whose key was created (or found to exist) recently."""

    def __init__(self) -> None:
        self._checked: dict[str, float] = {}

    def due(self, namespace: str) -> bool:
        last = self._checked.get(namespace)
        return last is None or time.monotonic() - last > RECHECK_SECONDS

    def done(self, namespace: str) -> None:
        self._checked[namespace] = time.monotonic()
