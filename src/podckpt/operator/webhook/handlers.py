"""Admission of one pod: the thin async layer around the pure pipeline (`decide`, `inject`).

`admit()` takes an AdmissionReview and returns the response. kopf runs the process (login,
the namespace watch, start-up and shutdown), but admission requests are served by our own
aiohttp route (`server.py`) instead of kopf's generic admission machinery: on a pod, kopf's
path (memo copies, handler bookkeeping, a deep copy and `jsonpatch` diff of the body) costs
~4 ms of CPU, ours under 1 ms, and the webhook's p99 target is 25 ms with 20 admissions in
flight (docs/operator.md, "Why admission bypasses kopf's webhook machinery").

Reads only, but for one side effect (`sideEffects: NoneOnDryRun`): Events on a workload about
its pods' refusals and mistakes (`report`), never for a dry-run. Namespace labels come from a
watch, slot holders from a LIST, checkpoint PVCs (their state, and the dump throughput
measured on them) and ReplicaSets from GETs, pull Secrets from GETs (`pullsecrets`: only the
pod's own namespace, only where that namespace granted it). Everything an admission waits for
ends within `admission_deadline_seconds`, inside the webhook's `timeoutSeconds`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from podckpt.api import Key, qualified
from podckpt.operator import metrics
from podckpt.operator.domain import sizing
from podckpt.operator.domain.identity import Identity
from podckpt.operator.domain.slots import Holder, SlotChoice, holder_state
from podckpt.operator.kube.api import ApiError, KubeAPI, namespaced
from podckpt.operator.settings import OperatorSettings

from . import claimgate, decide, inject
from .argv import EmptyArgvError, ImageArgv
from .imageconfig import ImageConfigError, ImageConfigResolver
from .pullsecrets import PullSecretError, PullSecrets
from .report import REFUSED, Reporter
from .report import WARNING as MISTAKE
from .review import AdmissionRequest, AdmissionReview, AdmissionReviewResponse, Status, respond
from .slots import SlotBook

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class WebhookState:
    """Everything a handler needs, kept in kopf's memo."""

    op: OperatorSettings
    resolver: ImageConfigResolver
    slots: SlotBook
    secrets: PullSecrets
    api: KubeAPI | None = None
    #: Namespace name -> (labels, annotations), kept by the namespace watch.
    namespaces: dict[str, tuple[dict[str, str], dict[str, str]]] = dataclasses.field(
        default_factory=dict
    )
    #: ReplicaSet uid -> Deployment uid, for the checkpoint volume's owner.
    owners: claimgate.OwnerCache = dataclasses.field(default_factory=claimgate.OwnerCache)
    #: Events about a workload's pods, posted on the workload.
    reporter: Reporter = dataclasses.field(default_factory=Reporter)
    admitted: int = 0
    denied: int = 0


class Denied(Exception):
    """The pod is refused with this message and HTTP-like code."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


async def namespace_event(
    event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """Keep (labels, annotations) of every namespace, for namespace defaults."""
    state: WebhookState = memo["podckpt"]
    name = body.metadata.name
    if event.get("type") == "DELETED":
        state.namespaces.pop(name, None)
    else:
        state.namespaces[name] = (dict(body.metadata.labels), dict(body.metadata.annotations))


async def read_namespace(
    state: WebhookState, namespace: str
) -> tuple[dict[str, str], dict[str, str]]:
    """The namespace's labels and annotations from the API server (a LIST by name: the
    webhook's RBAC has list and watch on namespaces, not get), into the watch's cache."""
    if state.api is None:  # only before start-up ends (the server starts after the login)
        return {}, {}
    try:
        result = await state.api.get(
            "/api/v1/namespaces", fieldSelector=f"metadata.name={namespace}"
        )
    except ApiError as exc:
        raise Denied(f"podckpt: cannot read namespace {namespace}: {exc}", code=500) from None
    items = result.get("items") or ()
    meta = (items[0].get("metadata") or {}) if items else {}
    entry = (dict(meta.get("labels") or {}), dict(meta.get("annotations") or {}))
    state.namespaces[namespace] = entry
    return entry


def _namespace_selected(pod: Mapping[str, Any], plan: decide.Plan | decide.Skip) -> bool:
    """Whether the pod reached us only because of its namespace's labels while our view of the
    namespace says it asks for nothing: the view is behind (a namespace created or labelled
    a moment ago, not yet delivered by the watch). The webhooks' selectors send a pod without
    its own `checkpoint-mode` (label or annotation) only when its namespace asks for
    checkpointing or injection."""
    if not isinstance(plan, decide.Skip) or plan.reason != decide.NOT_ENABLED:
        return False
    meta = pod.get("metadata", {})
    key = qualified(Key.CHECKPOINT_MODE)
    return key not in (meta.get("labels") or {}) and key not in (meta.get("annotations") or {})


async def slot_holders(state: WebhookState, namespace: str, group: str) -> list[Holder]:
    """The pods of a slot group (live, terminating or gone), read from the API server.

    A quorum read, not a watch cache: a replacement created right after its predecessor was
    deleted must see the slot's state as it is, and a watch may lag by that much.
    """
    op = state.op
    if state.api is None:
        raise Denied("podckpt: the webhook is not connected yet", code=503)
    selector = f"{op.annotation('slot-group')}={group}"
    try:
        result = await state.api.get(namespaced("pods", namespace), labelSelector=selector)
    except ApiError as exc:
        raise Denied(f"podckpt: cannot list slot holders: {exc}", code=500) from None
    holders = (_as_holder(state, item, group) for item in result.get("items") or ())
    return [h for h in holders if h is not None]


def _as_holder(state: WebhookState, item: dict[str, Any], group: str) -> Holder | None:
    """`item` as a holder of `group`'s slots; None when it carries no slot of that group."""
    op = state.op
    meta = item.get("metadata") or {}
    labels = meta.get("labels") or {}
    slot = labels.get(op.annotation("slot"), "")
    if labels.get(op.annotation("slot-group")) != group or not slot.isdigit():
        return None
    if not meta.get("name"):
        return None
    now = dt.datetime.now(dt.UTC)
    lost_after = dt.timedelta(seconds=op.slot_lost_after_seconds)
    return Holder(int(slot), meta["name"], holder_state(item, now, lost_after))


async def _pod_named(state: WebhookState, namespace: str, name: str) -> dict[str, Any] | None:
    """The pod of this name, if one exists. A LIST by name, which the webhook's RBAC already
    allows (no `get` on pods)."""
    assert state.api is not None  # slot_holders checked it
    try:
        result = await state.api.get(
            namespaced("pods", namespace), fieldSelector=f"metadata.name={name}"
        )
    except ApiError as exc:
        raise Denied(f"podckpt: cannot list pod {name}: {exc}", code=500) from None
    items = result.get("items") or []
    return items[0] if items else None


async def choose_slot(
    state: WebhookState, namespace: str, identity: Identity, *, dry_run: bool
) -> SlotChoice:
    """The slot and pod name of a new Deployment/ReplicaSet pod (`domain.slots`)."""
    holders = await slot_holders(state, namespace, identity.slot_group)
    squatted: list[str] = []
    for _ in range(3):
        choice = state.slots.assign(
            namespace, identity, holders, taken_names=squatted, reserve=not dry_run
        )
        if choice.waits:
            return choice
        found = await _pod_named(state, namespace, choice.name)
        if found is None:
            return choice
        holder = _as_holder(state, found, identity.slot_group)
        if holder is not None:
            # Stored since our LIST (another admission's pod): its slot is taken. Not a
            # squatter: the reservation that kept the slot from us may meanwhile have been
            # dropped by a concurrent admission of this process that saw the pod, and the
            # slot would then be handed out again under its next name (seen in the operator
            # fault suite: two pods in one slot, `-slot-6` and `-slot-6-1`).
            holders.append(holder)
        else:
            squatted.append(choice.name)
    return choice


async def _resolve_images(
    state: WebhookState, namespace: str, pod: Mapping[str, Any], images: Mapping[str, str]
) -> dict[str, ImageArgv]:
    if not images:
        return {}
    refused: list[PullSecretError] = []
    try:
        credentials = await state.secrets.credentials(
            state.api, namespace, pod.get("spec", {}), refused=refused
        )
    except PullSecretError as exc:
        raise Denied(str(exc), code=exc.code) from None

    async def one(container: str, image: str) -> tuple[str, ImageArgv]:
        try:
            return container, await state.resolver.resolve(image, credentials)
        except ImageConfigError as exc:
            if refused:
                # The registry wanted what a Secret podckpt may not read would have given.
                raise Denied(f"{refused[0]} ({exc})", code=refused[0].code) from None
            raise Denied(
                f"podckpt: cannot wrap container {container!r}: {exc}. Set `command` on the"
                " container, or give the pod an imagePullSecret for its registry"
            ) from None

    pairs = await asyncio.gather(*(one(c, i) for c, i in images.items()))
    return dict(pairs)


async def admit(state: WebhookState, review: AdmissionReview) -> AdmissionReviewResponse:
    """The response to one AdmissionReview of a pod CREATE. Refusals and mistakes about a
    workload's pod are also reported on the workload (`report`; never for a dry-run)."""
    request = review["request"]
    uid = request["uid"]
    pod = request.get("object") or {}
    namespace = request.get("namespace") or pod.get("metadata", {}).get("namespace", "")
    report = not request.get("dryRun")
    started = time.perf_counter()
    deadline = state.op.admission_deadline_seconds
    try:
        async with asyncio.timeout(deadline):
            patch, warnings, mistakes = await _mutate(state, request)
    except TimeoutError:
        state.denied += 1
        message = (
            f"podckpt: admission did not finish within {deadline:g} s (a registry or the API"
            " server is slow); set `command` on the containers to need no registry, or retry"
        )
        logger.warning("denied pod in %s: %s", namespace, message)
        return respond(uid, denied=Status(code=504, message=message))
    except Denied as exc:
        state.denied += 1
        logger.info("denied pod in %s: %s", namespace, exc)
        if report and exc.code < 500:  # the pod's fault, not the webhook's or the API's
            state.reporter.report(state.api, namespace, pod, REFUSED, [str(exc)])
        _count("denied", started)
        return respond(uid, denied=Status(code=exc.code, message=str(exc)))
    if report:
        state.reporter.report(state.api, namespace, pod, MISTAKE, mistakes)
    _count("injected" if patch else "skipped", started)
    return respond(uid, patch=patch, warnings=warnings)


def _count(outcome: str, started: float) -> None:
    metrics.ADMISSIONS.labels(outcome).inc()
    metrics.ADMISSION_SECONDS.labels(outcome).observe(time.perf_counter() - started)


async def _mutate(
    state: WebhookState, request: AdmissionRequest
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    started = time.perf_counter()
    pod = request.get("object")
    if request.get("operation") != "CREATE" or request["kind"]["kind"] != "Pod" or not pod:
        return [], [], []
    namespace = request.get("namespace") or ""
    claimed = (pod.get("metadata") or {}).get("namespace")
    if not namespace or (claimed and claimed != namespace):
        raise Denied("podckpt: the request's namespace and the pod's namespace differ")
    known = state.namespaces.get(namespace)
    labels, annotations = known or await read_namespace(state, namespace)
    try:
        plan = decide.plan(pod, decide.Namespace(namespace, labels, annotations), state.op)
        if known is not None and _namespace_selected(pod, plan):
            labels, annotations = await read_namespace(state, namespace)
            plan = decide.plan(pod, decide.Namespace(namespace, labels, annotations), state.op)
    except decide.DeniedError as exc:
        raise Denied(str(exc)) from None
    if isinstance(plan, decide.Skip):
        return [], list(plan.warnings), []
    images = await _resolve_images(state, namespace, pod, plan.images)
    slot = None
    if plan.identity.needs_slot:
        slot = await choose_slot(
            state, namespace, plan.identity, dry_run=bool(request.get("dryRun"))
        )
    gate = False
    measured = None
    if plan.settings.storage_volume is None:
        identity = plan.identity.with_slot(slot.slot) if slot is not None else plan.identity
        check = await claimgate.check_claim(
            state.api,
            state.owners,
            namespace,
            pod,
            identity.claim_name,
            measured_annotation=state.op.annotation(sizing.MEASURED_THROUGHPUT),
        )
        gate = state.op.scheduling_gate and check.gate
        measured = check.measured_bytes_per_second
    try:
        mutated, built_warnings = inject.build_with_warnings(
            pod,
            plan,
            images,
            state.op,
            slot=slot,
            gate=gate,
            measured_bytes_per_second=measured,
        )
    except EmptyArgvError as exc:
        raise Denied(f"podckpt: {exc}") from None
    except decide.DeniedError as exc:
        raise Denied(str(exc)) from None
    patch = inject.make_patch(pod, mutated)
    state.admitted += 1
    logger.info(
        "injecting pod %s/%s (%s, identity %s, containers %s%s) in %.2f ms",
        namespace,
        mutated["metadata"].get("name") or mutated["metadata"].get("generateName", "?"),
        plan.mode.value,
        mutated["metadata"]["annotations"][state.op.annotation("identity")],
        ",".join(plan.containers),
        ", waits for its volume" if gate else "",
        (time.perf_counter() - started) * 1000,
    )
    return patch, [*plan.warnings, *built_warnings], list(plan.mistakes)


def register(registry: kopf.OperatorRegistry) -> None:
    """The webhook's only kopf handler: the namespace watch."""
    kopf.on.event("v1", "namespaces", registry=registry)(namespace_event)
