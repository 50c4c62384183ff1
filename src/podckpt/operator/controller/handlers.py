"""The kopf layer of the controller: event handlers and indices only, so kopf keeps no state
on user pods (no finalizers, no annotations)."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

from podckpt.api import InvalidValueError, Key, parse_settings, qualified
from podckpt.operator.domain.identity import Identity, Owner, controller_owner
from podckpt.operator.kube.api import (
    ApiError,
    KubeAPI,
    event_manifest,
    namespaced,
    post_event_once,
)
from podckpt.operator.settings import OperatorSettings

from . import events, storekey, volumes

logger = logging.getLogger(__name__)

_RETRIES = (1.0, 2.0, 4.0)


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


@dataclasses.dataclass
class ControllerState:
    op: OperatorSettings
    api: KubeAPI | None = None
    claims: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    keys: storekey.KeyTracker = dataclasses.field(default_factory=storekey.KeyTracker)
    seen: _Seen = dataclasses.field(default_factory=_Seen)
    sweeper: asyncio.Task[None] | None = None


async def namespace_entry(
    body: kopf.Body, **_: Any
) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    return {body.metadata.name: (dict(body.metadata.labels), dict(body.metadata.annotations))}


def _api(state: ControllerState) -> KubeAPI:
    if state.api is None:
        raise kopf.TemporaryError("not logged in yet", delay=1)
    return state.api


async def _with_retries(what: str, fn: Any) -> Any:
    """Event handlers are not retried by kopf: retry transient API errors here."""
    for delay in (*_RETRIES, None):
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
    state: ControllerState, body: kopf.Body, event: events.PodEvent, fact: str
) -> None:
    """Post one Event about a pod, named after the fact so that it is posted once, whichever
    controller instance (or restart) sees the fact. Never raises: an Event is information."""
    if state.api is None:
        return
    api = state.api
    meta = body.metadata
    manifest = event_manifest(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
        },
        type=event.type,
        reason=event.reason,
        message=event.message,
        component=COMPONENT,
        fact=f"{fact}/{event.reason}/{event.detail}",
    )
    try:
        await _with_retries(f"post {event.reason}", lambda: post_event_once(api, manifest))
    except ApiError as exc:
        logger.warning(
            "could not post %s on %s/%s: %s", event.reason, meta.namespace, meta.name, exc
        )


async def _owner(api: KubeAPI, pod: Mapping[str, Any], namespace: str) -> Owner | None:
    owner = controller_owner(pod)
    if owner is None:
        return None
    replicaset = None
    if owner.kind == "ReplicaSet":
        replicaset = await api.get(namespaced("/apis/apps/v1/replicasets", namespace, owner.name))
    return volumes.top_level_owner(owner, replicaset)


async def ensure_claim(
    state: ControllerState,
    body: kopf.Body,
    namespace_labels: Mapping[str, str],
    namespace_annotations: Mapping[str, str],
) -> None:
    """Create the identity's PVC if it does not exist yet."""
    op = state.op
    annotations = body.metadata.annotations
    claim = annotations.get(op.annotation("claim"))
    namespace = body.metadata.namespace or ""
    if not claim or (namespace, claim) in state.claims:
        return
    api = _api(state)
    path = namespaced("persistentvolumeclaims", namespace, claim)
    try:
        await _with_retries(f"get PVC {namespace}/{claim}", lambda: api.get(path))
    except ApiError as exc:
        if not exc.not_found:
            raise
    else:
        state.claims.add((namespace, claim))
        return

    identity = Identity.decode(annotations[op.annotation("identity")])
    try:
        settings = parse_settings(
            dict(body.metadata.labels),
            dict(annotations),
            namespace_labels=namespace_labels,
            namespace_annotations=namespace_annotations,
        )
    except InvalidValueError as exc:  # the webhook admitted it: keys changed since
        await announce(
            state,
            body,
            events.PodEvent(events.WARNING, "InvalidSettings", str(exc)),
            body.metadata.uid or "",
        )
        return
    names = set(annotations.get(op.annotation("containers"), "").split(","))
    containers = [c for c in body.spec.get("containers") or () if c.get("name") in names]
    size = volumes.claim_size(settings, containers, op, pod_spec=body.spec)
    owner = await _with_retries("find the workload", lambda: _owner(api, body, namespace))
    manifest = volumes.build_claim(
        identity=identity,
        namespace=namespace,
        owner=owner,
        size=size,
        storage_class=settings.storage_class,
        op=op,
    )
    try:
        await _with_retries(
            f"create PVC {namespace}/{claim}",
            lambda: api.post(namespaced("persistentvolumeclaims", namespace), manifest),
        )
    except ApiError as exc:
        if not exc.conflict:
            raise
    else:
        storage = manifest["spec"]["resources"]["requests"]["storage"]
        klass = settings.storage_class or "the default class"
        owner_text = f"{owner.kind} {owner.name}" if owner else "nothing"
        await announce(
            state,
            body,
            events.PodEvent(
                events.NORMAL,
                "VolumeProvisioned",
                f"checkpoint volume {claim}: {storage} ({size.reason}), {klass},"
                f" owned by {owner_text}",
                claim,
            ),
            body.metadata.uid or "",
        )
        logger.info("created PVC %s/%s (%s)", namespace, claim, storage)
    state.claims.add((namespace, claim))


async def ensure_store_key(state: ControllerState, body: kopf.Body) -> None:
    """Create the namespace's store key Secret unless it exists (storekey.py). The pod's
    kubelet retries mounting it until then, as it does for any Secret."""
    op = state.op
    namespace = body.metadata.namespace or ""
    if not op.store_key_secret or not state.keys.due(namespace):
        return
    api = _api(state)
    manifest = storekey.build_store_key_secret(namespace, op)
    try:
        await _with_retries(
            f"create Secret {namespace}/{op.store_key_secret}",
            lambda: api.post(namespaced("secrets", namespace), manifest),
        )
    except ApiError as exc:
        if not exc.conflict:
            raise
    else:
        kopf.event(
            body,
            type=events.NORMAL,
            reason="StoreKeyCreated",
            message=f"Secret {op.store_key_secret} created: the key that authenticates this"
            " namespace's checkpoints",
        )
        logger.info("created the store key Secret of namespace %s", namespace)
    state.keys.done(namespace)


#: Seconds between reads of a started container's log head (~30 s in all).
LOG_HEAD_RETRY_DELAYS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0)


async def _report_agent(state: ControllerState, body: kopf.Body) -> None:
    """Events from the agent: how each container instance ended (exit code and termination
    message) and how it started (the head of its log). See `events` for which fact comes
    from where; each is announced once."""
    op = state.op
    uid = body.metadata.uid or ""
    containers = body.metadata.annotations.get(op.annotation("containers"), "").split(",")
    status = dict(body.status)
    for ended in events.terminated_containers(status, containers):
        instance = (uid, ended.container, ended.instance)
        if not state.seen.add((*instance, "terminated")):
            continue
        found = events.exit_events(ended.container, ended.exit_code, ended.message)
        if state.seen.add((*instance, "started")):
            # It ended before its log head was read: how it started is in the message too.
            found = events.start_events(ended.container, ended.message) + found
        for event in found:
            await announce(state, body, event, "/".join(instance))
    if state.api is None:
        return
    for container, instance_id in events.started_containers(status, containers):
        if not state.seen.add((uid, container, instance_id, "started")):
            continue
        path = namespaced("pods", body.metadata.namespace or "", body.metadata.name) + "/log"
        text = ""
        try:
            # Running comes before the agent's restore line: read again until it is there.
            for delay in LOG_HEAD_RETRY_DELAYS:
                await asyncio.sleep(delay)
                text = await state.api.get_text(
                    path, container=container, limitBytes=str(op.agent_log_head_bytes)
                )
                if events.start_decided(text):
                    break
        except ApiError as exc:
            logger.info("no log of %s/%s: %s", body.metadata.name, container, exc)
            continue
        for event in events.start_events(container, text):
            await announce(state, body, event, f"{uid}/{container}/{instance_id}")


async def injected_pod(
    *,
    event: Mapping[str, Any],
    body: kopf.Body,
    memo: kopf.Memo,
    namespace_entry: kopf.Index[str, Any],
    **_: Any,
) -> None:
    """Every change of a pod the webhook injected."""
    state: ControllerState = memo["podckpt"]
    kind = event.get("type")
    uid = body.metadata.uid or ""
    namespace = body.metadata.namespace or ""
    entry: tuple[dict[str, str], dict[str, str]] = next(
        iter(namespace_entry.get(namespace, ())), ({}, {})
    )
    if kind != "DELETED":
        await ensure_store_key(state, body)
        await ensure_claim(state, body, entry[0], entry[1])
    if kind == "ADDED" and state.seen.add((uid, "injected")):
        op = state.op
        annotations = body.metadata.annotations
        injected = events.PodEvent(
            events.NORMAL,
            "Injected",
            f"podckpt agent in container(s) {annotations.get(op.annotation('containers'))}"
            f" ({annotations.get(op.annotation('mode'))}), identity"
            f" {annotations.get(op.annotation('identity'))}",
        )
        await announce(state, body, injected, uid)
    await _report_agent(state, body)
    if kind == "DELETED":
        state.seen.discard_prefix(uid)


async def uninjected_pod(*, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A pod that asks for checkpointing but carries no agent (label added after creation)."""
    state: ControllerState = memo["podckpt"]
    if not state.seen.add((body.metadata.uid or "", "not-injected")):
        return
    warning = events.PodEvent(
        events.WARNING,
        "NotInjected",
        f"{qualified(Key.CHECKPOINT_MODE)} is set, but this pod was created without the"
        " podckpt agent and cannot be checkpointed. Put the label on the pod template (or enable"
        f" {qualified('checkpoint-injection')}=enabled on the namespace) and recreate the pod",
    )
    await announce(state, body, warning, body.metadata.uid or "")


def register(registry: kopf.OperatorRegistry, op: OperatorSettings) -> None:
    injected = op.annotation("injected")
    mode = qualified(Key.CHECKPOINT_MODE)
    kopf.index("v1", "namespaces", registry=registry)(namespace_entry)
    kopf.on.event(
        "v1", "pods", annotations={injected: kopf.PRESENT}, registry=registry, id="injected"
    )(cast(Any, injected_pod))
    kopf.on.event(
        "v1",
        "pods",
        labels={mode: lambda value, **_: str(value).lower() == "true"},
        annotations={injected: kopf.ABSENT},
        registry=registry,
        id="not-injected",
    )(cast(Any, uninjected_pod))
