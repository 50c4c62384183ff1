"""Checkpoint volumes: created when an identity's first pod appears, and pods let through to
the scheduler once their volume is usable. The claim is the one podckpt would have chosen for
the pod, recomputed from it (`domain.reserved`): a pod whose `podckpt.io/claim` says otherwise
gets a `ClaimRefused` Warning and no volume.

A pod whose PVC was not usable at admission carries the scheduling gate
`<domain>/checkpoint-volume` (`webhook.claimgate`). For each injected pod (`settle`):

- its PVC is missing: created (owned by the top-level workload, sized from the keys), then the
  gate is removed;
- its PVC exists and belongs to the pod's workload (or to none: left by an orphaning delete):
  the gate is removed;
- its PVC is Terminating, or belongs to a deleted workload of the same name: the pod waits
  (one Normal `WaitingForVolume` Event says why); when the PVC watch reports it gone (or the
  re-check loop finds it gone), a new PVC is created and the gate removed.

What the controller knows of PVCs comes from a watch of podckpt's PVCs (`claim_event`): a
PVC that is deleted, or starts being deleted, is no longer counted as present, so a workload
recreated under the same name gets a working volume.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from podckpt.api import InvalidValueError, parse_settings
from podckpt.operator import metrics
from podckpt.operator.domain.claims import (
    ClaimState,
    bound_or_late_binding,
    claim_state,
    describe,
)
from podckpt.operator.domain.identity import Owner, controller_owner, top_level_owner
from podckpt.operator.domain.reserved import UntrustedClaim, trusted_claim
from podckpt.operator.kube.api import ApiError, KubeAPI, namespaced

from . import events, volumes
from .common import ClaimKey, ControllerState, Waiting, announce, api_of, with_retries

logger = logging.getLogger(__name__)


def _summary(claim: Mapping[str, Any]) -> dict[str, Any]:
    """What the controller keeps of a PVC: enough for `claim_state` and binding."""
    meta = claim.get("metadata") or {}
    return {
        "spec": {"storageClassName": (claim.get("spec") or {}).get("storageClassName")},
        "status": {"phase": (claim.get("status") or {}).get("phase")},
        "metadata": {
            "name": meta.get("name"),
            "uid": meta.get("uid"),
            "deletionTimestamp": meta.get("deletionTimestamp"),
            "ownerReferences": [
                {"uid": r.get("uid"), "kind": r.get("kind"), "name": r.get("name")}
                for r in meta.get("ownerReferences") or ()
                if r
            ],
        },
    }


def gated(pod: Mapping[str, Any], gate: str) -> int | None:
    """Index of `gate` in the pod's scheduling gates, None when it has none."""
    for index, entry in enumerate((pod.get("spec") or {}).get("schedulingGates") or ()):
        if entry.get("name") == gate:
            return index
    return None


async def _owner(api: KubeAPI, pod: Mapping[str, Any], namespace: str) -> Owner | None:
    owner = controller_owner(pod)
    if owner is None:
        return None
    replicaset = None
    if owner.kind == "ReplicaSet":
        replicaset = await api.get(namespaced("/apis/apps/v1/replicasets", namespace, owner.name))
    return top_level_owner(owner, replicaset)


async def _read_claim(state: ControllerState, key: ClaimKey) -> dict[str, Any] | None:
    """The PVC from the watch's cache, else from the API server (a pod may be seen before
    its PVC's watch event)."""
    cached = state.claims.get(key)
    if cached is not None:
        return cached
    api = api_of(state)
    path = namespaced("persistentvolumeclaims", key[0], key[1])
    try:
        found = await with_retries(f"get PVC {key[0]}/{key[1]}", lambda: api.get(path))
    except ApiError as exc:
        if not exc.not_found:
            raise
        return None
    summary = _summary(found)
    state.claims[key] = summary
    return summary


async def _create(
    state: ControllerState,
    pod: Mapping[str, Any],
    owner: Owner | None,
    namespace_labels: Mapping[str, str],
    namespace_annotations: Mapping[str, str],
) -> bool:
    """Create the pod's PVC; False when it exists already (another controller, a race) or
    the pod's keys became invalid."""
    op = state.op
    api = api_of(state)
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    namespace = meta.get("namespace") or ""
    trusted = trusted_claim(pod, op.annotation("claim"), op.annotation("slot"))
    claim, identity = trusted.claim, trusted.identity
    try:
        settings = parse_settings(
            dict(meta.get("labels") or {}),
            dict(annotations),
            namespace_labels=namespace_labels,
            namespace_annotations=namespace_annotations,
        )
    except InvalidValueError as exc:  # the webhook admitted it: keys changed since
        invalid = events.PodEvent(events.WARNING, "InvalidSettings", str(exc))
        await announce(state, pod, invalid, meta.get("uid") or "")
        return False
    names = set(annotations.get(op.annotation("containers"), "").split(","))
    spec = pod.get("spec") or {}
    containers = [c for c in spec.get("containers") or () if c.get("name") in names]
    size = volumes.claim_size(settings, containers, op, pod_spec=spec)
    manifest = volumes.build_claim(
        identity=identity,
        namespace=namespace,
        owner=owner,
        size=size,
        storage_class=settings.storage_class,
        op=op,
    )
    try:
        created = await with_retries(
            f"create PVC {namespace}/{claim}",
            lambda: api.post(namespaced("persistentvolumeclaims", namespace), manifest),
        )
    except ApiError as exc:
        if not exc.conflict:
            raise
        return False
    state.claims[(namespace, claim)] = _summary(created)
    storage = manifest["spec"]["resources"]["requests"]["storage"]
    klass = settings.storage_class or "the default class"
    owner_text = f"{owner.kind} {owner.name}" if owner else "nothing"
    provisioned = events.PodEvent(
        events.NORMAL,
        "VolumeProvisioned",
        f"checkpoint volume {claim}: {storage} ({size.reason}), {klass}, owned by {owner_text}",
        claim,
    )
    await announce(state, pod, provisioned, meta.get("uid") or "")
    logger.info("created PVC %s/%s (%s)", namespace, claim, storage)
    metrics.VOLUMES_PROVISIONED.labels(namespace, identity.kind.value).inc()
    return True


async def _binding_mode(state: ControllerState, storage_class: str | None) -> str | None:
    """The class's `volumeBindingMode` (cached: it is immutable); None when unknown."""
    if not storage_class:
        return None
    if storage_class not in state.binding_modes:
        api = api_of(state)
        try:
            found = await api.get(f"/apis/storage.k8s.io/v1/storageclasses/{storage_class}")
        except ApiError as exc:
            if not exc.not_found:
                raise
            return None
        state.binding_modes[storage_class] = str(found.get("volumeBindingMode") or "Immediate")
    return state.binding_modes[storage_class]


async def _ungate(state: ControllerState, pod: Mapping[str, Any], index: int) -> None:
    """Remove the gate (a JSON patch that tests it is still at `index`: nothing else of the
    pod is touched, and a concurrent change makes the patch fail instead of removing another
    gate)."""
    api = api_of(state)
    meta = pod.get("metadata") or {}
    path = namespaced("pods", meta.get("namespace") or "", meta.get("name"))
    patch = [
        {"op": "test", "path": f"/spec/schedulingGates/{index}/name", "value": state.op.gate_name},
        {"op": "remove", "path": f"/spec/schedulingGates/{index}"},
    ]
    try:
        await with_retries(f"ungate {meta.get('name')}", lambda: api.json_patch(path, patch))
    except ApiError as exc:
        if exc.not_found or exc.status == 422:  # gone, or no longer gated there
            return
        raise
    logger.info(
        "pod %s/%s: checkpoint volume ready, gate removed", meta.get("namespace"), meta.get("name")
    )


async def settle(
    state: ControllerState,
    pod: Mapping[str, Any],
    namespace_labels: Mapping[str, str],
    namespace_annotations: Mapping[str, str],
) -> None:
    """Make the pod's PVC exist and let the pod be scheduled once it is usable."""
    op = state.op
    meta = pod.get("metadata") or {}
    claim = (meta.get("annotations") or {}).get(op.annotation("claim"))
    if not claim or meta.get("deletionTimestamp"):
        return
    try:
        # Never a name an annotation asks for: the claim podckpt would have chosen for this
        # pod, recomputed from it (docs/security.md, "Reserved keys").
        trusted_claim(pod, op.annotation("claim"), op.annotation("slot"))
    except UntrustedClaim as exc:
        logger.warning("no volume for pod %s/%s: %s", meta.get("namespace"), meta.get("name"), exc)
        refused = events.PodEvent(
            events.WARNING,
            "ClaimRefused",
            f"podckpt creates no volume for this pod: {exc}. podckpt.io/* keys are written by"
            " podckpt's webhook only",
        )
        await announce(state, pod, refused, meta.get("uid") or "")
        return
    namespace = meta.get("namespace") or ""
    key = (namespace, claim)
    gate = gated(pod, op.gate_name)
    if gate is None and key in state.ready:
        return
    api = api_of(state)
    owner = await with_retries("find the workload", lambda: _owner(api, pod, namespace))
    found = await _read_claim(state, key)
    status = claim_state(found, owner.uid if owner else None)
    if status is ClaimState.MISSING:
        await _create(state, pod, owner, namespace_labels, namespace_annotations)
        status = claim_state(await _read_claim(state, key), owner.uid if owner else None)
    uid = meta.get("uid") or ""
    if status is ClaimState.READY and gate is not None:
        claim_now = await _read_claim(state, key) or {}
        mode = await _binding_mode(state, (claim_now.get("spec") or {}).get("storageClassName"))
        if not bound_or_late_binding(claim_now, mode):
            # Provisioning: the watch reports the PVC Bound, which wakes the pod.
            await _wait(state, pod, key, namespace_labels, namespace_annotations, "provisioning")
            return
    if status is ClaimState.READY:
        state.ready.add(key)
        waiting = state.waiting.get(key, {})
        waiting.pop(uid, None)
        if not waiting:
            state.waiting.pop(key, None)
        if gate is not None:
            await _ungate(state, pod, gate)
        return
    if gate is None:
        return  # not ours to hold (admitted without the gate); the scheduler decides
    await _wait(state, pod, key, namespace_labels, namespace_annotations, status.value)


async def _wait(  # noqa: PLR0917 - one module's helper
    state: ControllerState,
    pod: Mapping[str, Any],
    key: ClaimKey,
    namespace_labels: Mapping[str, str],
    namespace_annotations: Mapping[str, str],
    why: str,
) -> None:
    """Remember a gated pod until its PVC changes; say why once."""
    meta = pod.get("metadata") or {}
    uid = meta.get("uid") or ""
    first = uid not in state.waiting.get(key, {})
    state.waiting.setdefault(key, {})[uid] = Waiting(
        meta.get("name") or "", namespace_labels, namespace_annotations
    )
    if not first:
        return
    text = (
        f"checkpoint volume {key[1]} is being provisioned; this pod is scheduled once it is Bound"
        if why == "provisioning"
        else describe(ClaimState(why), key[1])
    )
    logger.info("pod %s/%s waits: %s", key[0], meta.get("name"), text)
    await announce(state, pod, events.PodEvent(events.NORMAL, "WaitingForVolume", text, why), uid)


async def wake(state: ControllerState, key: ClaimKey) -> None:
    """Settle again every pod that waits for the PVC `key` (it changed or is gone)."""
    api = api_of(state)
    for uid, waiting in list(state.waiting.get(key, {}).items()):
        try:
            pod = await api.get(namespaced("pods", key[0], waiting.pod))
        except ApiError as exc:
            if exc.not_found:
                state.waiting.get(key, {}).pop(uid, None)
                continue
            raise
        if (pod.get("metadata") or {}).get("uid") != uid:
            state.waiting.get(key, {}).pop(uid, None)
            continue
        await settle(state, pod, waiting.namespace_labels, waiting.namespace_annotations)
    if not state.waiting.get(key):
        state.waiting.pop(key, None)


async def claim_event(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The PVC watch: keep the cache true, and wake pods that wait for a PVC that changed."""
    state: ControllerState = memo["podckpt"]
    key = (body.metadata.namespace or "", body.metadata.name or "")
    if event.get("type") == "DELETED":
        state.claims.pop(key, None)
        state.ready.discard(key)
    else:
        summary = _summary(body)
        if summary != state.claims.get(key):
            state.ready.discard(key)  # re-checked by the next pod that needs it
        state.claims[key] = summary
    # A standby keeps its cache warm (it may lead next) but acts on nothing.
    if key in state.waiting and state.api is not None and state.leading:
        try:
            await wake(state, key)
        except ApiError as exc:
            logger.warning("waking pods waiting for %s/%s: %s", key[0], key[1], exc)


async def recheck_waiting(state: ControllerState) -> None:
    """A safety net under the watch (a DELETED event missed across a watch restart): the PVCs
    that pods wait for are read again every few seconds, only while some pod waits."""
    while True:
        await asyncio.sleep(state.op.gate_recheck_seconds)
        if state.api is None:
            continue
        for key in list(state.waiting):
            state.claims.pop(key, None)  # read it from the API server, not the cache
            try:
                await wake(state, key)
            except ApiError as exc:
                logger.warning("re-checking %s/%s: %s", key[0], key[1], exc)
