"""What the controller's handlers share: their state, retries of transient API errors, and
Events posted once per fact."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from podckpt.operator.kube.api import ApiError, KubeAPI, event_manifest, post_event_once
from podckpt.operator.kube.leader import LeaderElector
from podckpt.operator.settings import OperatorSettings

from . import events, storekey

logger = logging.getLogger(__name__)

#: Seconds between the attempts of `with_retries`.
RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0)


class _Seen:
    """A bounded set: what was already announced (events are never posted twice)."""

    def __init__(self, size: int = 50_000) -> None:
        self._items: collections.OrderedDict[tuple[str, ...], None] = collections.OrderedDict()
        self._size = size

    def add(self, key: tuple[str, ...]) -> bool:
        """True if `key` is new."""
        if key in self._items:
            return False
        self._items[key] = None
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return True

    def discard_prefix(self, uid: str) -> None:
        for key in [k for k in self._items if k[0] == uid]:
            del self._items[key]


#: (namespace, name) of a PVC.
ClaimKey = tuple[str, str]


@dataclasses.dataclass
class Waiting:
    """A gated pod that waits for its checkpoint volume (see `claims`)."""

    pod: str
    namespace_labels: Mapping[str, str]
    namespace_annotations: Mapping[str, str]


@dataclasses.dataclass
class Pending:
    """A pod whose handling failed on a transient API error: handled again until it succeeds
    (kopf delivers each watch event once; a pod's next event may never come)."""

    namespace: str
    pod: str
    namespace_labels: Mapping[str, str]
    namespace_annotations: Mapping[str, str]
    error: str


@dataclasses.dataclass
class ControllerState:
    op: OperatorSettings
    api: KubeAPI | None = None
    #: podckpt's PVCs as the PVC watch last saw them (metadata only); DELETED removes them.
    claims: dict[ClaimKey, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: PVCs known usable by their pods; any change the watch reports removes them.
    ready: set[ClaimKey] = dataclasses.field(default_factory=set)
    #: PVC -> pod uid -> the gated pod waiting for it.
    waiting: dict[ClaimKey, dict[str, Waiting]] = dataclasses.field(default_factory=dict)
    #: StorageClass name -> volumeBindingMode (immutable, so cached for good).
    binding_modes: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Pod uid -> a pod to handle again (see `Pending`).
    pending: dict[str, Pending] = dataclasses.field(default_factory=dict)
    keys: storekey.KeyTracker = dataclasses.field(default_factory=storekey.KeyTracker)
    seen: _Seen = dataclasses.field(default_factory=_Seen)
    sweeper: asyncio.Task[None] | None = None
    rechecker: asyncio.Task[None] | None = None
    election: asyncio.Task[None] | None = None
    resyncer: asyncio.Task[None] | None = None
    elector: LeaderElector | None = None
    #: False on a standby replica (leader election): its handlers do nothing.
    leading: bool = True
    retrier: asyncio.Task[None] | None = None


def api_of(state: ControllerState) -> KubeAPI:
    if state.api is None:
        raise kopf.TemporaryError("not logged in yet", delay=1)
    return state.api


async def with_retries(what: str, fn: Any) -> Any:
    """Event handlers are not retried by kopf: retry transient API errors here (a few
    seconds; a longer outage is left to `handlers.retry_pending`)."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return await fn()
        except ApiError as exc:
            if not exc.transient or delay is None:
                raise
            logger.warning("%s: %s; retrying in %.0f s", what, exc, delay)
            await asyncio.sleep(delay)
    return None  # pragma: no cover


COMPONENT = "podckpt-controller"


async def announce(
    state: ControllerState, pod: Mapping[str, Any], event: events.PodEvent, fact: str
) -> None:
    """Post one Event about a pod, named after the fact so that it is posted once, whichever
    controller instance (or restart) sees the fact. Never raises: an Event is information."""
    if state.api is None:
        return
    api = state.api
    meta = pod.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    manifest = event_manifest(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": meta.get("uid")},
        },
        type=event.type,
        reason=event.reason,
        message=event.message,
        component=COMPONENT,
        fact=f"{fact}/{event.reason}/{event.detail}",
    )
    try:
        await with_retries(f"post {event.reason}", lambda: post_event_once(api, manifest))
    except ApiError as exc:
        logger.warning("could not post %s on %s/%s: %s", event.reason, namespace, name, exc)
