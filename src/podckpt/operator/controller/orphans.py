"""Orphaned checkpoint volumes: podckpt PVCs that no workload owns any more.

A PVC loses its owner when the workload was deleted with `--cascade=orphan` (its pods and
volumes are kept on purpose, e.g. to recreate a StatefulSet with new immutable fields). Such a
volume is never deleted by podckpt: it is reported (log line and a Warning event on the PVC),
and adopted again by a workload of the same name and kind that takes the same identity.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from podckpt.operator.kube.api import KubeAPI
from podckpt.operator.settings import OperatorSettings

logger = logging.getLogger(__name__)


def orphans(claims: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The claims without any ownerReference."""
    return [c for c in claims if not (c.get("metadata") or {}).get("ownerReferences")]


async def list_claims(api: KubeAPI, op: OperatorSettings) -> list[dict[str, Any]]:
    selector = quote(f"{op.annotation('managed-by')}=podckpt")
    result = await api.get(f"/api/v1/persistentvolumeclaims?labelSelector={selector}")
    items: list[dict[str, Any]] = result.get("items") or []
    return items
