"""`python -m podckpt.operator.controller`: the controller."""

from __future__ import annotations

import sys

# kopf imports the official kubernetes client when it is installed, for a login method we do
# not use (we log in with kopf's own service-account/kubeconfig readers): not importing it
# saves ~10 MB of resident memory per process.
sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
# ruff: noqa: E402 - the imports below must come after that line

import asyncio
import contextlib
import logging
import time
from typing import Any, cast

import kopf
from aiohttp import web

from podckpt.operator import metrics
from podckpt.operator.kube import runner
from podckpt.operator.kube.api import ApiError, event_manifest, namespaced
from podckpt.operator.kube.leader import LeaderElector, LeadershipLost
from podckpt.operator.settings import OperatorSettings

from . import claims, handlers, orphans
from .common import ControllerState
from .handlers import register, retry_pending

logger = logging.getLogger("podckpt.operator.controller")


async def sweep_orphans(state: ControllerState) -> None:
    reported: set[str] = set()
    while True:
        if state.api is not None and state.leading:
            try:
                claims = await orphans.list_claims(state.api, state.op)
            except ApiError as exc:
                logger.warning("orphan sweep: %s", exc)
            else:
                found = orphans.orphans(claims)
                metrics.ORPHANED_VOLUMES.set(len(found))
                for claim in found:
                    meta = claim["metadata"]
                    if meta["uid"] in reported:
                        continue
                    reported.add(meta["uid"])
                    logger.warning(
                        "orphaned checkpoint volume %s/%s: no workload owns it",
                        meta["namespace"],
                        meta["name"],
                    )
                    event = event_manifest(
                        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", **claim},
                        type="Warning",
                        reason="OrphanedCheckpointVolume",
                        message="no workload owns this checkpoint volume; delete it when its"
                        " checkpoints are no longer wanted",
                        component="podckpt-controller",
                    )
                    try:
                        await state.api.post(namespaced("events", meta["namespace"]), event)
                    except ApiError as exc:
                        logger.warning("could not post the orphan event: %s", exc)
        await asyncio.sleep(state.op.orphan_sweep_seconds)


async def resync(state: ControllerState) -> None:
    """What a new leader missed while it stood by: every injected pod once, as its watch
    event would have delivered it (Events are posted once by name, the PVC journal applies
    each agent line once)."""
    assert state.api is not None
    injected = state.op.annotation("injected")
    namespaces: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    for item in (await state.api.get("/api/v1/namespaces")).get("items") or ():
        meta = item.get("metadata") or {}
        namespaces[meta.get("name", "")] = (
            dict(meta.get("labels") or {}),
            dict(meta.get("annotations") or {}),
        )
    params = {"limit": "500"}
    count = 0
    while True:
        page = await state.api.get("/api/v1/pods", **params)
        for item in page.get("items") or ():
            if injected in ((item.get("metadata") or {}).get("annotations") or {}):
                body = kopf.Body(cast(Any, {"apiVersion": "v1", "kind": "Pod", **item}))
                try:
                    await handlers.process_pod(
                        state, body, "RESYNC", namespaces.get(body.metadata.namespace or "")
                    )
                except (ApiError, kopf.TemporaryError) as exc:
                    logger.warning("resync of %s: %s", body.metadata.name, exc)
                count += 1
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            break
        params = {"limit": "500", "continue": token}
    logger.info("resynchronised %d injected pods", count)


async def elect(state: ControllerState, stop: asyncio.Event) -> None:
    """Leader election; a lost lease stops the operator (the kubelet restarts it)."""
    assert state.elector is not None

    def changed(leading: bool) -> None:
        state.leading = leading
        metrics.LEADER.set(1 if leading else 0)
        if leading:
            state.resyncer = asyncio.create_task(resync(state))

    state.elector.on_change = changed
    try:
        await state.elector.run()
    except LeadershipLost as exc:
        logger.error(  # noqa: TRY400 - the reason is the message, not a traceback
            "%s: stopping (the kubelet restarts this replica as a follower)", exc
        )
        stop.set()


def build(
    op: OperatorSettings, stop: asyncio.Event | None = None
) -> tuple[kopf.OperatorRegistry, kopf.OperatorSettings, kopf.Memo]:
    registry = kopf.OperatorRegistry()
    settings = kopf.OperatorSettings()
    runner.configure(settings, op)
    state = ControllerState(op=op, leading=not op.leader_election)
    memo = kopf.Memo(podckpt=state)
    register(registry, op)
    kopf.on.login(registry=registry)(runner.login)
    servers: list[web.AppRunner] = []
    stop_flag = stop or asyncio.Event()

    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        state.api = runner.connect(settings)
        metrics.LEADER.set(1 if state.leading else 0)
        served = await metrics.serve(op.metrics_port)
        if served is not None:
            servers.append(served)
        if op.leader_election:
            state.elector = LeaderElector(
                state.api,
                namespace=op.operator_namespace,
                name=op.lease_name,
                identity=op.pod_name or runner.identity(),
                lease_seconds=op.lease_duration_seconds,
                renew_deadline_seconds=op.lease_renew_deadline_seconds,
                retry_seconds=op.lease_retry_seconds,
            )
            state.election = asyncio.create_task(elect(state, stop_flag))
        state.sweeper = asyncio.create_task(sweep_orphans(state))
        state.rechecker = asyncio.create_task(claims.recheck_waiting(state))
        state.retrier = asyncio.create_task(retry_pending(state))
        logger.info("controller started")

    async def probe(**_: Any) -> dict[str, Any]:
        """kopf's /healthz: fails (so the kubelet restarts us) when leader election stopped
        talking to the API server for longer than two leases."""
        if state.elector is None:
            return {"leading": state.leading}
        silent = time.monotonic() - state.elector.last_contact
        if state.election is not None and state.election.done():
            raise kopf.PermanentError("leader election ended")
        if silent > 2 * op.lease_duration_seconds:
            raise kopf.PermanentError(f"no answer from the API server for {silent:.0f} s")
        return {"leading": state.leading, "lease_contact_s": round(silent, 1)}

    async def cleanup(**_: Any) -> None:
        if state.election is not None and state.elector is not None:
            state.election.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await state.election
            await state.elector.release()
        for task in (state.sweeper, state.rechecker, state.election, state.resyncer, state.retrier):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for served in servers:
            await served.cleanup()
        if state.api is not None:
            await state.api.close()

    kopf.on.startup(registry=registry)(startup)
    kopf.on.probe(registry=registry, id="controller")(probe)
    kopf.on.cleanup(registry=registry)(cleanup)
    return registry, settings, memo


def main() -> int:
    stop = asyncio.Event()
    return runner.main(lambda op: build(op, stop), stop_flag=stop)


if __name__ == "__main__":
    sys.exit(main())
