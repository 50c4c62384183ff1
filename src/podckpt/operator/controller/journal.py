"""The agent's lines, journaled on the checkpoint PVC and counted once.

Every batch of agent lines the controller reads (a termination message, a log head, a log tail
after `kubectl podckpt checkpoint`) goes through `record()`: it folds the lines into the PVC's
summary annotation (`podckpt.api.summary`) and returns the lines that were new to it. Only
those become Events and metrics, so a log read twice, a controller restart or a new leader
never announces a checkpoint twice. The patch carries the resourceVersion it read (a
concurrent writer makes it retry). A pod on the user's own volume has no PVC of ours: its
lines are deduplicated in memory instead (`ControllerState.seen`).
"""

from __future__ import annotations

import logging
from typing import Any

from podckpt.api import summary
from podckpt.operator import metrics
from podckpt.operator.kube.api import ApiError, KubeAPI, namespaced
from podckpt.operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

_ATTEMPTS = 4


async def record(
    api: KubeAPI,
    op: OperatorSettings,
    *,
    namespace: str,
    claim: str,
    container: str,
    records: list[dict[str, Any]],
    pod: str,
) -> list[dict[str, Any]] | None:
    """The lines of `records` that the PVC's summary did not hold yet (now recorded), or None
    when there is no such PVC."""
    path = namespaced("persistentvolumeclaims", namespace, claim)
    key = summary.annotation(op.domain)
    for _attempt in range(_ATTEMPTS):
        try:
            pvc = await api.get(path)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        meta = pvc.get("metadata") or {}
        current = summary.parse((meta.get("annotations") or {}).get(key))
        new_lines = []
        updated = current
        for line in records:
            after = summary.apply(updated, container, line, pod)
            if after is not updated:
                new_lines.append(line)
                updated = after
        if not new_lines:
            return []
        patch = {
            "metadata": {
                "resourceVersion": meta.get("resourceVersion"),
                "annotations": {key: summary.dump(updated)},
            }
        }
        try:
            await api.merge_patch(path, patch)
        except ApiError as exc:
            if exc.conflict:
                continue  # changed since our read: read and fold again
            raise
        return new_lines
    logger.warning("PVC %s/%s kept changing; checkpoint summary not recorded", namespace, claim)
    return []


def fresh_start_reason(records: list[dict[str, Any]]) -> str | None:
    """Why a container started without a restore, from one log head's lines."""
    reason = None
    for line in records:
        phase, outcome = line.get("phase"), line.get("outcome")
        if phase == "restore" and outcome == "ok":
            return None
        if phase == "restore" and outcome == "fallback-fresh":
            reason = "restore-failed"
        elif phase == "restore" and outcome == "skipped":
            why = str(line.get("why") or "")
            reason = (
                "completed" if "completed" in why else "policy-fresh" if "fresh" in why else "other"
            )
        elif phase == "fresh-start" and outcome == "ok" and reason is None:
            reason = "no-checkpoint"
    return reason


def observe(records: list[dict[str, Any]], namespace: str, kind: str) -> None:
    """Metrics of new agent lines (each line is passed here once)."""
    for line in records:
        phase, outcome = line.get("phase"), line.get("outcome")
        duration = line.get("duration_s")
        seconds = float(duration) if isinstance(duration, int | float) else None
        match phase, outcome:
            case "dump", "ok":
                if seconds is not None:
                    metrics.DUMP_SECONDS.observe(seconds)
            case "dump", "failed":
                metrics.CHECKPOINTS.labels("failed", namespace, kind).inc()
            case "commit", "ok":
                metrics.CHECKPOINTS.labels("ok", namespace, kind).inc()
                if seconds is not None:
                    metrics.COMMIT_SECONDS.observe(seconds)
                size = line.get("bytes")
                if isinstance(size, int | float):
                    metrics.IMAGE_BYTES.observe(float(size))
            case "restore", "ok" | "failed" | "refused":
                metrics.RESTORES.labels(outcome, namespace, kind).inc()
                if outcome == "ok" and seconds is not None:
                    metrics.RESTORE_SECONDS.observe(seconds)
    reason = fresh_start_reason(records)
    if reason is not None:
        metrics.FRESH_STARTS.labels(reason, namespace, kind).inc()
