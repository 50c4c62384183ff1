"""From the agent's JSON lines to Kubernetes Events (pure).

The agent writes one JSON line per phase to stderr (`{"agent": "podckpt", "phase": ...,
"outcome": ...}`), and its last lines to the container's termination message on exit. The
controller reads the termination message of a terminated container (checkpoint results; the
pod may vanish right after) and the head of a started container's log (restore results).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from typing import Any

NORMAL = "Normal"
WARNING = "Warning"


@dataclasses.dataclass(frozen=True)
class PodEvent:
    type: str
    reason: str
    message: str


def agent_lines(text: str) -> Iterator[dict[str, Any]]:
    """The agent's records in a log or termination message; other lines are ignored."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("agent") == "podckpt":
            yield record


def _seconds(record: dict[str, Any]) -> str:
    duration = record.get("duration_s")
    return f" in {duration:.2f} s" if isinstance(duration, int | float) else ""


def to_event(container: str, record: dict[str, Any]) -> PodEvent | None:
    """The Event a user wants to see for one agent record, if any."""
    phase, outcome = record.get("phase"), record.get("outcome")
    generation = record.get("generation", "?")
    error = record.get("error", "")
    match phase, outcome:
        case "restore", "ok":
            return PodEvent(
                NORMAL,
                "Restored",
                f"container {container}: restored from generation {generation}{_seconds(record)}",
            )
        case "restore", "failed":
            return PodEvent(
                WARNING,
                "RestoreFailed",
                f"container {container}: generation {generation} could not be restored: {error}",
            )
        case "restore", "fallback-fresh":
            return PodEvent(
                WARNING,
                "StartedFresh",
                f"container {container}: restore failed, started fresh"
                f" ({record.get('why', 'no generation could be restored')})",
            )
        case "restore", "skipped":
            return PodEvent(
                NORMAL,
                "StartedFresh",
                f"container {container}: started fresh ({record.get('why', 'no checkpoint')})",
            )
        case "commit", "ok":
            size = record.get("bytes")
            size_text = f", {size / 2**20:.1f} MiB" if isinstance(size, int | float) else ""
            return PodEvent(
                NORMAL,
                "CheckpointCommitted",
                f"container {container}: checkpoint generation {generation}{size_text}"
                f"{_seconds(record)}",
            )
        case "dump", "failed":
            return PodEvent(
                WARNING,
                "CheckpointFailed",
                f"container {container}: checkpoint failed: {error}",
            )
        case "start", "failed":
            return PodEvent(WARNING, "AgentFailed", f"container {container}: {error}")
        case "restore", "refused":
            return PodEvent(
                WARNING,
                "RestoreRefused",
                f"container {container}: generation {generation} not restored:"
                f" {record.get('why', '')}",
            )
        case "store", "unusable":
            return PodEvent(
                WARNING,
                "CheckpointStoreUnusable",
                f"container {container}: {error}; started fresh, without checkpoints",
            )
        case "store", "repaired" | "damaged":
            return PodEvent(WARNING, "CheckpointStoreDamaged", f"container {container}: {error}")
        case "cleanup", "damaged":
            return PodEvent(
                WARNING,
                "CheckpointDamaged",
                f"container {container}: removed generation(s)"
                f" {', '.join(map(str, record.get('removed') or ()))}: {record.get('why', '')}",
            )
    return None


def start_decided(text: str) -> bool:
    """Whether a log head already says how the container started: restored, fresh, failed.

    The kubelet reports a container running before its agent has restored anything, so a
    head read at that moment may hold no outcome yet."""
    for record in agent_lines(text):
        phase, outcome = record.get("phase"), record.get("outcome")
        if phase in ("fresh-start", "start") or (phase == "restore" and outcome != "failed"):
            return True
    return False


def events_from(container: str, text: str) -> list[PodEvent]:
    return [e for e in (to_event(container, r) for r in agent_lines(text)) if e is not None]


def terminated_messages(
    status: dict[str, Any], containers: Iterable[str]
) -> Iterator[tuple[str, str, str]]:
    """(container, instance id, message) of each terminated checkpointed container."""
    wanted = set(containers)
    for entry in status.get("containerStatuses") or ():
        if entry.get("name") not in wanted:
            continue
        for which in ("state", "lastState"):
            terminated = (entry.get(which) or {}).get("terminated") or {}
            message = terminated.get("message")
            if message:
                instance = terminated.get("containerID") or str(terminated.get("finishedAt"))
                yield entry["name"], instance, message


def started_containers(
    status: dict[str, Any], containers: Iterable[str]
) -> Iterator[tuple[str, str]]:
    """(container, instance id) of each running checkpointed container."""
    wanted = set(containers)
    for entry in status.get("containerStatuses") or ():
        running = (entry.get("state") or {}).get("running")
        if entry.get("name") in wanted and running is not None:
            yield entry["name"], entry.get("containerID") or str(running.get("startedAt"))
