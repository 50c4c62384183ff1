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
from typing import Any

import kopf

from podckpt.operator.kube import runner
from podckpt.operator.kube.api import ApiError, event_manifest, namespaced
from podckpt.operator.settings import OperatorSettings

from . import claims, orphans
from .common import ControllerState
from .handlers import register

logger = logging.getLogger("podckpt.operator.controller")


async def sweep_orphans(state: ControllerState) -> None:
    reported: set[str] = set()
    while True:
        if state.api is not None:
            try:
                claims = await orphans.list_claims(state.api, state.op)
            except ApiError as exc:
                logger.warning("orphan sweep: %s", exc)
            else:
                for claim in orphans.orphans(claims):
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


def build(op: OperatorSettings) -> tuple[kopf.OperatorRegistry, kopf.OperatorSettings, kopf.Memo]:
    registry = kopf.OperatorRegistry()
    settings = kopf.OperatorSettings()
    runner.configure(settings, op)
    state = ControllerState(op=op)
    memo = kopf.Memo(podckpt=state)
    register(registry, op)
    kopf.on.login(registry=registry)(runner.login)

    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        state.api = runner.connect(settings)
        state.sweeper = asyncio.create_task(sweep_orphans(state))
        state.rechecker = asyncio.create_task(claims.recheck_waiting(state))
        logger.info("controller started")

    async def cleanup(**_: Any) -> None:
        for task in (state.sweeper, state.rechecker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if state.api is not None:
            await state.api.close()

    kopf.on.startup(registry=registry)(startup)
    kopf.on.cleanup(registry=registry)(cleanup)
    return registry, settings, memo


def main() -> int:
    return runner.main(build)


if __name__ == "__main__":
    sys.exit(main())
