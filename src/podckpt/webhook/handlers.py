"""The kopf layer of the webhook: thin handlers around the pure pipeline in `mutate`.

Reads only (side-effect free, so `sideEffects: None` and dry-run are honest): the namespace's
labels come from a watch (a kopf index), slot holders from a LIST, pull Secrets from GETs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any, cast

import kopf

from podckpt.kube.api import ApiError, KubeAPI, namespaced
from podckpt.operator_settings import OperatorSettings

from . import mutate
from .argv import EmptyArgvError, ImageArgv
from .imageconfig import Credential, ImageConfigError, ImageConfigResolver, credentials_from_secrets
from .slots import SlotBook

logger = logging.getLogger(__name__)

_SECRET_TTL = 30.0


@dataclasses.dataclass
class WebhookState:
    """Everything a handler needs, kept in kopf's memo."""

    op: OperatorSettings
    resolver: ImageConfigResolver
    slots: SlotBook
    api: KubeAPI | None = None
    secrets: dict[tuple[str, str], tuple[float, Mapping[str, Any] | None]] = dataclasses.field(
        default_factory=dict
    )
    admitted: int = 0
    denied: int = 0


def namespace_entry(body: kopf.Body, **_: Any) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """Index: namespace name -> (labels, annotations)."""
    return {body.metadata.name: (dict(body.metadata.labels), dict(body.metadata.annotations))}


async def slot_holders(state: WebhookState, namespace: str, group: str) -> list[tuple[int, bool]]:
    """(slot, terminating) of the live pods of a slot group, read from the API server.

    A quorum read, not a watch cache: a replacement created right after its predecessor was
    deleted must see the slot free, and a watch may lag by that much.
    """
    op = state.op
    if state.api is None:
        raise kopf.AdmissionError("podckpt: the webhook is not connected yet", code=503)
    selector = f"{op.annotation('slot-group')}={group}"
    try:
        result = await state.api.get(namespaced("pods", namespace), labelSelector=selector)
    except ApiError as exc:
        raise kopf.AdmissionError(f"podckpt: cannot list slot holders: {exc}", code=500) from None
    holders: list[tuple[int, bool]] = []
    for item in result.get("items") or ():
        meta = item.get("metadata") or {}
        slot = (meta.get("labels") or {}).get(op.annotation("slot"), "")
        if slot.isdigit():
            holders.append((int(slot), meta.get("deletionTimestamp") is not None))
    return holders


async def _pull_credentials(
    state: WebhookState, namespace: str, spec: Mapping[str, Any]
) -> dict[str, Credential]:
    secrets: list[Mapping[str, Any]] = []
    now = time.monotonic()
    for ref in spec.get("imagePullSecrets") or ():
        name = ref.get("name")
        if not name:
            continue
        cached = state.secrets.get((namespace, name))
        if cached is not None and cached[0] > now:
            body = cached[1]
        else:
            body = None
            if state.api is not None:
                try:
                    body = await state.api.get(namespaced("secrets", namespace, name))
                except ApiError as exc:
                    if not exc.not_found:
                        raise kopf.AdmissionError(
                            f"podckpt: cannot read imagePullSecret {name}: {exc}", code=500
                        ) from None
            state.secrets[(namespace, name)] = (now + _SECRET_TTL, body)
        if body is not None:
            secrets.append(body)
    return credentials_from_secrets(secrets)


async def _resolve_images(
    state: WebhookState, namespace: str, pod: Mapping[str, Any], images: Mapping[str, str]
) -> dict[str, ImageArgv]:
    if not images:
        return {}
    credentials = await _pull_credentials(state, namespace, pod.get("spec", {}))

    async def one(container: str, image: str) -> tuple[str, ImageArgv]:
        try:
            return container, await state.resolver.resolve(image, credentials)
        except ImageConfigError as exc:
            raise kopf.AdmissionError(
                f"podckpt: cannot wrap container {container!r}: {exc}. Set `command` on the"
                " container, or give the pod an imagePullSecret for its registry",
                code=400,
            ) from None

    pairs = await asyncio.gather(*(one(c, i) for c, i in images.items()))
    return dict(pairs)


async def inject(
    *,
    body: kopf.Body,
    patch: kopf.Patch,
    warnings: list[str],
    dryrun: bool,
    memo: kopf.Memo,
    namespace_entry: kopf.Index[str, Any],
    **_: Any,
) -> None:
    """Mutating admission of pod CREATE."""
    started = time.perf_counter()
    state: WebhookState = memo["podckpt"]
    pod: dict[str, Any] = dict(body)
    namespace = body.metadata.namespace or ""
    entry: tuple[dict[str, str], dict[str, str]] = next(
        iter(namespace_entry.get(namespace, ())), ({}, {})
    )
    ns = mutate.Namespace(namespace, entry[0], entry[1])
    try:
        plan = mutate.plan(pod, ns, state.op)
    except mutate.DeniedError as exc:
        state.denied += 1
        raise kopf.AdmissionError(str(exc), code=400) from None
    if isinstance(plan, mutate.Skip):
        warnings.extend(plan.warnings)
        return
    images = await _resolve_images(state, namespace, pod, plan.images)
    slot = None
    if plan.identity.needs_slot:
        group = plan.identity.slot_group
        holders = await slot_holders(state, namespace, group)
        slot = state.slots.assign(namespace, group, holders, reserve=not dryrun)
    try:
        mutated = mutate.build(pod, plan, images, state.op, slot=slot)
    except EmptyArgvError as exc:
        state.denied += 1
        raise kopf.AdmissionError(f"podckpt: {exc}", code=400) from None
    warnings.extend(plan.warnings)
    state.admitted += 1
    logger.info(
        "injecting pod %s/%s (%s, identity %s, containers %s) in %.2f ms",
        namespace,
        mutated["metadata"].get("name") or mutated["metadata"].get("generateName", "?"),
        plan.mode.value,
        mutated["metadata"]["annotations"][state.op.annotation("identity")],
        ",".join(plan.containers),
        (time.perf_counter() - started) * 1000,
    )

    def replace(target: Any) -> None:
        # kopf diffs the original body against this one (jsonpatch.make_patch): the patch
        # is the difference of the original and the rewritten pod.
        target.clear()
        target.update(mutated)

    patch.fns.append(replace)


def register(registry: kopf.OperatorRegistry, op: OperatorSettings) -> None:
    """Attach the handlers to `registry` with the filters that depend on the settings."""
    kopf.index("v1", "namespaces", registry=registry)(namespace_entry)
    kopf.on.mutate(
        "v1",
        "pods",
        id="inject",
        operation="CREATE",
        side_effects=False,
        ignore_failures=False,
        registry=registry,
    )(cast(Any, inject))  # kopf's protocol does not know our index kwargs
