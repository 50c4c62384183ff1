"""The kopf layer of the controller: event handlers and indices only, so kopf keeps no state
on user pods (no finalizers, no annotations). The one write to a pod is the removal of
podckpt's own scheduling gate once its checkpoint volume is usable (`claims`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

from podckpt.api import Key, qualified, summary
from podckpt.operator.domain.identity import Identity
from podckpt.operator.domain.sizing import MEASURED_THROUGHPUT
from podckpt.operator.kube.api import ApiError, namespaced
from podckpt.operator.settings import OperatorSettings

from . import claims, events, journal, storekey
from .common import ControllerState, Pending, announce, api_of, with_retries

logger = logging.getLogger(__name__)


async def namespace_entry(
    body: kopf.Body, **_: Any
) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    return {body.metadata.name: (dict(body.metadata.labels), dict(body.metadata.annotations))}


async def ensure_store_key(state: ControllerState, body: Mapping[str, Any]) -> None:
    """Create the namespace's store key Secret unless it exists (storekey.py). The pod's
    kubelet retries mounting it until then, as it does for any Secret."""
    op = state.op
    namespace = (body.get("metadata") or {}).get("namespace") or ""
    if not op.store_key_secret or not state.keys.due(namespace):
        return
    api = api_of(state)
    manifest = storekey.build_store_key_secret(namespace, op)
    try:
        await with_retries(
            f"create Secret {namespace}/{op.store_key_secret}",
            lambda: api.post(namespaced("secrets", namespace), manifest),
        )
    except ApiError as exc:
        if not exc.conflict:
            raise
    else:
        created = events.PodEvent(
            events.NORMAL,
            "StoreKeyCreated",
            f"Secret {op.store_key_secret} created: the key that authenticates this"
            " namespace's checkpoints",
        )
        await announce(state, body, created, f"{namespace}/store-key")
        logger.info("created the store key Secret of namespace %s", namespace)
    state.keys.done(namespace)


def _retryable(exc: ApiError) -> bool:
    """Transient errors, and 401/403: an API server that has just restarted answers those for
    a moment, until its authenticator and authorizer have synced their caches (measured by
    the fault suite: up to ~1 s of 403s after /readyz). A real RBAC mistake retried every few
    seconds costs a log line each time and heals when the RBAC is fixed; giving up would
    leave the pod without its volume for good."""
    return exc.transient or exc.status in (401, 403)


async def handle_pod(
    state: ControllerState,
    pod: Mapping[str, Any],
    namespace_labels: Mapping[str, str],
    namespace_annotations: Mapping[str, str],
) -> None:
    """What an injected pod needs from the controller: its namespace's store key and its
    checkpoint volume (then its scheduling gate removed). An API error that may pass (the API
    server restarting, overloaded, unreachable, not yet authorizing: `_retryable`) does not
    lose the pod: it is remembered and handled again by `retry_pending` until it succeeds."""
    meta = pod.get("metadata") or {}
    uid = meta.get("uid") or ""
    try:
        await ensure_store_key(state, pod)
        await claims.settle(state, pod, namespace_labels, namespace_annotations)
    except ApiError as exc:
        if not _retryable(exc):
            raise
        if uid not in state.pending:
            logger.warning(
                "pod %s/%s: %s; handled again every %.0f s until it succeeds",
                meta.get("namespace"),
                meta.get("name"),
                exc,
                state.op.gate_recheck_seconds,
            )
        state.pending[uid] = Pending(
            meta.get("namespace") or "",
            meta.get("name") or "",
            namespace_labels,
            namespace_annotations,
            str(exc),
        )
        return
    state.pending.pop(uid, None)


async def retry_pending_once(state: ControllerState) -> None:
    """Handle again every pending pod that still exists (read afresh: it may have changed)."""
    api = api_of(state)
    for uid, pending in list(state.pending.items()):
        try:
            pod = await api.get(namespaced("pods", pending.namespace, pending.pod))
        except ApiError as exc:
            if exc.not_found:
                state.pending.pop(uid, None)
            continue
        if (pod.get("metadata") or {}).get("uid") != uid:
            state.pending.pop(uid, None)
            continue
        try:
            await handle_pod(state, pod, pending.namespace_labels, pending.namespace_annotations)
        except ApiError:  # not retryable: a mistake of ours, logged once
            state.pending.pop(uid, None)
            logger.exception("pod %s/%s", pending.namespace, pending.pod)


async def retry_pending(state: ControllerState) -> None:
    """The controller's safety net for API outages: pending pods every few seconds."""
    while True:
        await asyncio.sleep(state.op.gate_recheck_seconds)
        if state.api is not None and state.pending and state.leading:
            await retry_pending_once(state)


#: Seconds between reads of a started container's log head (~30 s in all).
LOG_HEAD_RETRY_DELAYS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0)


def _workload_kind(body: kopf.Body, op: OperatorSettings) -> str:
    encoded = body.metadata.annotations.get(op.annotation("identity"))
    try:
        return Identity.decode(encoded).kind.value if encoded else "unknown"
    except (ValueError, KeyError):
        return "unknown"


async def _journal(
    state: ControllerState, body: kopf.Body, container: str, text: str
) -> list[dict[str, Any]]:
    """Fold the agent's lines in `text` into the PVC's journal and count the new ones in
    the metrics (`journal`); returns the new lines. A pod on the user's own volume has no PVC
    of ours: its lines are deduplicated in memory."""
    op = state.op
    records = list(events.agent_lines(text))
    if not records:
        return []
    namespace = body.metadata.namespace or ""
    claim = body.metadata.annotations.get(op.annotation("claim"))
    new: list[dict[str, Any]] | None = None
    if claim and state.api is not None:
        try:
            new = await journal.record(
                state.api,
                op,
                namespace=namespace,
                claim=claim,
                container=container,
                records=records,
                pod=body.metadata.name or "",
            )
        except ApiError as exc:
            logger.warning("could not record checkpoints on PVC %s/%s: %s", namespace, claim, exc)
            return []
    if new is None:
        uid = body.metadata.uid or ""
        new = [r for r in records if state.seen.add((uid, container, summary.line_id(r)))]
    journal.observe(new, namespace, _workload_kind(body, op))
    return new


async def _report_agent(state: ControllerState, body: kopf.Body) -> None:
    """Events from the agent: how each container instance ended (exit code and termination
    message) and how it started (the head of its log). See `events` for which fact comes
    from where; each is announced once. Every line also goes to the PVC's journal and the
    metrics (`_journal`), and after `kubectl podckpt checkpoint` the log tail does too."""
    op = state.op
    uid = body.metadata.uid or ""
    annotations = body.metadata.annotations
    containers = annotations.get(op.annotation("containers"), "").split(",")
    status = dict(body.status)
    for ended in events.terminated_containers(status, containers):
        instance = (uid, ended.container, ended.instance)
        if not state.seen.add((*instance, "terminated")):
            continue
        await _journal(state, body, ended.container, ended.message or "")
        found = events.exit_events(ended.container, ended.exit_code, ended.message)
        await _record_throughput(state, body, ended)
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
        await _journal(state, body, container, text)
        for event in events.start_events(container, text):
            await announce(state, body, event, f"{uid}/{container}/{instance_id}")
    requested = annotations.get(op.annotation("checkpoint-requested"))
    if requested and state.seen.add((uid, "checkpoint-requested", requested)):
        await _checkpoint_requested(state, body, containers, status)


async def _checkpoint_requested(
    state: ControllerState, body: kopf.Body, containers: list[str], status: dict[str, Any]
) -> None:
    """`kubectl podckpt checkpoint` checkpointed a running container: its lines are at the
    end of its log."""
    assert state.api is not None
    uid = body.metadata.uid or ""
    path = namespaced("pods", body.metadata.namespace or "", body.metadata.name) + "/log"
    for container, _instance in events.started_containers(status, containers):
        try:
            text = await state.api.get_text(path, container=container, tailLines="400")
        except ApiError as exc:
            logger.info("no log of %s/%s: %s", body.metadata.name, container, exc)
            continue
        for line in await _journal(state, body, container, text):
            if line.get("phase") == "commit" and line.get("outcome") == "ok":
                size = line.get("bytes")
                size_text = f", {size / 2**20:.1f} MiB" if isinstance(size, int | float) else ""
                committed = events.PodEvent(
                    events.NORMAL,
                    "CheckpointCommitted",
                    f"container {container}: checkpoint generation {line.get('generation')}"
                    f"{size_text} (requested with kubectl podckpt checkpoint)",
                    str(line.get("generation")),
                )
                await announce(state, body, committed, f"{uid}/{container}/requested")


async def _record_throughput(
    state: ControllerState, body: kopf.Body, ended: events.Terminated
) -> None:
    """Put the throughput the agent measured on its final checkpoint on the identity's PVC
    (`sizing.MEASURED_THROUGHPUT`): the webhook computes the next pod's grace period from it.
    Only on podckpt's own PVCs (a plain pod's storage volume is the user's)."""
    measured = events.measured_throughput(ended.exit_code, ended.message)
    claim = body.metadata.annotations.get(state.op.annotation("claim"))
    if measured is None or not claim or state.api is None:
        return
    api = state.api
    path = namespaced("persistentvolumeclaims", body.metadata.namespace or "", claim)
    patch = {"metadata": {"annotations": {state.op.annotation(MEASURED_THROUGHPUT): str(measured)}}}
    try:
        await with_retries(f"annotate PVC {claim}", lambda: api.merge_patch(path, patch))
    except ApiError as exc:
        logger.info("throughput of %s not recorded on %s: %s", ended.container, claim, exc)


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
    if not state.leading:
        return  # a standby replica: the leader acts (and resynchronises when it takes over)
    namespace = body.metadata.namespace or ""
    entry: tuple[dict[str, str], dict[str, str]] = next(
        iter(namespace_entry.get(namespace, ())), ({}, {})
    )
    await process_pod(state, body, event.get("type"), entry)


async def process_pod(
    state: ControllerState,
    body: kopf.Body,
    kind: str | None,
    namespace_meta: tuple[dict[str, str], dict[str, str]] | None = None,
) -> None:
    """One look at an injected pod: its store key and volume, the Injected event, the
    agent's lines. `kind` is the watch event type (RESYNC when a new leader catches up)."""
    uid = body.metadata.uid or ""
    namespace_meta = namespace_meta or ({}, {})
    if kind != "DELETED":
        await handle_pod(state, body, namespace_meta[0], namespace_meta[1])
    else:
        state.pending.pop(uid, None)
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
    if not state.leading or not state.seen.add((body.metadata.uid or "", "not-injected")):
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
        "v1",
        "persistentvolumeclaims",
        labels={op.annotation("managed-by"): "podckpt"},
        registry=registry,
        id="claims",
    )(cast(Any, claims.claim_event))
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
    kopf.on.event(
        "v1",
        "pods",
        annotations={mode: lambda value, **_: str(value).lower() == "true", injected: kopf.ABSENT},
        registry=registry,
        id="not-injected-annotation",
    )(cast(Any, uninjected_pod))
