"""From the agent's JSON lines and exit codes to Kubernetes Events (pure).

The agent writes one JSON line per phase to stderr (`{"agent": "podckpt", "phase": ...,
"outcome": ...}`), its last lines to the container's termination message on exit, and exits
with a code of its own (`contract.ExitCode`) when it checkpointed, failed to, or failed itself.

Each fact has one source, so that it is announced once:

- **how a container started** (restored, restore failed or refused, started fresh and why,
  the store found damaged or unusable): the head of the started container's log
  (`start_events`). A container that ended before its log head
  was read gets them from its termination message instead (the handler decides);
- **how a container ended** (checkpoint committed, failed or skipped, agent failed): its
  termination, i.e. the exit code and the termination message (`exit_events`). The pod may
  vanish right after its containers exit, and its log with it; its status outlives both.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from typing import Any

from podckpt.api.contract import ExitCode

NORMAL = "Normal"
WARNING = "Warning"


@dataclasses.dataclass(frozen=True)
class PodEvent:
    type: str
    reason: str
    message: str
    #: What makes this fact distinct from another of the same reason in the same container
    #: instance (a generation), for the Event's deterministic name.
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Terminated:
    """One ended instance of a checkpointed container."""

    container: str
    instance: str
    exit_code: int | None
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


def _fresh_text(record: dict[str, Any]) -> str:
    cause = record.get("cause")
    why = record.get("why", "no checkpoint")
    return f"{cause}: {why}" if cause else str(why)


def start_event(container: str, record: dict[str, Any]) -> PodEvent | None:
    """The Event of one start-phase record (restore or fresh start), if any."""
    phase, outcome = record.get("phase"), record.get("outcome")
    generation = str(record.get("generation", "?"))
    error = record.get("error", "")
    match phase, outcome:
        case "restore", "ok":
            return PodEvent(
                NORMAL,
                "Restored",
                f"container {container}: restored from generation {generation}{_seconds(record)}",
                generation,
            )
        case "restore", "failed":
            return PodEvent(
                WARNING,
                "RestoreFailed",
                f"container {container}: generation {generation} could not be restored:"
                f" {record.get('error', '')}",
                generation,
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
                f"container {container}: started fresh ({_fresh_text(record)})",
            )
        case "restore", "refused":
            return PodEvent(
                WARNING,
                "RestoreRefused",
                f"container {container}: generation {generation} not restored:"
                f" {record.get('why', '')}",
                generation,
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
            removed = ", ".join(map(str, record.get("removed") or ()))
            return PodEvent(
                WARNING,
                "CheckpointDamaged",
                f"container {container}: removed generation(s) {removed}: {record.get('why', '')}",
                removed,
            )
    return None


def _connections_closed(container: str, record: dict[str, Any]) -> PodEvent | None:
    """A restore that kept the application but not its TCP connections (`tcp-established`
    asked, the pod's IP or network differs): the agent says so in the restore line itself,
    so that the Event does not depend on when the controller reads the log head."""
    why = record.get("connections_closed")
    if record.get("phase") != "restore" or record.get("outcome") != "ok" or not why:
        return None
    generation = str(record.get("generation", "?"))
    return PodEvent(
        WARNING,
        "ConnectionsClosed",
        f"container {container}: restored from generation {generation}, but its established"
        f" TCP connections could not be kept (tcp-established): they came back closed. {why}",
        generation,
    )


def start_events(container: str, text: str) -> list[PodEvent]:
    found: list[PodEvent] = []
    for record in agent_lines(text):
        for event in (start_event(container, record), _connections_closed(container, record)):
            if event is not None:
                found.append(event)
    return found


def _commit_message(container: str, commit: dict[str, Any] | None, generation: str) -> str:
    if commit is None:
        return f"container {container}: checkpoint generation {generation} committed"
    size = commit.get("bytes")
    size_text = f", {size / 2**20:.1f} MiB" if isinstance(size, int | float) else ""
    return f"container {container}: checkpoint generation {generation}{size_text}{_seconds(commit)}"


def _skipped(container: str, record: dict[str, Any]) -> str:
    """The agent's deadline check (agent/deadline.py) said no: its figures, in words."""
    size, rate = record.get("bytes"), record.get("bytes_per_s")
    figures = ""
    if isinstance(size, int | float) and isinstance(rate, int | float) and rate > 0:
        figures = (
            f" ({size / 2**20:.0f} MiB at {rate / 2**20:.0f} MiB/s"
            f" {record.get('throughput', 'assumed')} need ~{record.get('estimate_s')} s,"
            f" {record.get('left_s')} s of the grace period were left)"
        )
    return (
        f"container {container}: checkpoint skipped: it could not finish before the grace"
        f" period ends{figures}; the application got SIGTERM at once; a replacement restores"
        " the previous checkpoint, if any"
    )


def exit_events(container: str, exit_code: int | None, message: str) -> list[PodEvent]:
    """The Events of how a container instance ended: its exit code says what happened, its
    termination message (the agent's last lines) the details. Periodic and requested
    checkpoints earlier in the message are not announced again at the exit."""
    records = list(agent_lines(message))
    sigterm_dumps = [
        r for r in records if r.get("phase") == "dump" and r.get("reason") == "sigterm"
    ]
    if exit_code == ExitCode.CHECKPOINTED:
        dumped: dict[str, Any] = next(
            (r for r in reversed(sigterm_dumps) if r.get("outcome") == "ok"), {}
        )
        generation = str(dumped.get("generation", "?"))
        commit = next(
            (
                r
                for r in records
                if r.get("phase") == "commit" and r.get("outcome") == "ok"
                and r.get("generation") == generation
            ),
            None,
        )  # fmt: skip
        return [
            PodEvent(
                NORMAL,
                "CheckpointCommitted",
                _commit_message(container, commit, generation),
                generation,
            )
        ]
    if (
        exit_code == ExitCode.CHECKPOINT_FAILED
        and sigterm_dumps[-1:]
        and (sigterm_dumps[-1].get("outcome") == "skipped")
    ):
        return [PodEvent(WARNING, "CheckpointSkipped", _skipped(container, sigterm_dumps[-1]))]
    if exit_code == ExitCode.CHECKPOINT_FAILED:
        failed: dict[str, Any] = next(
            (r for r in reversed(sigterm_dumps) if r.get("outcome") == "failed"), {}
        )
        exited = next((r for r in records if r.get("phase") == "exit"), {})
        app_code = exited.get("app_code")
        then = (
            f"; the application got the SIGTERM and exited with {app_code}"
            if app_code is not None
            else ""
        )
        return [
            PodEvent(
                WARNING,
                "CheckpointFailed",
                f"container {container}: checkpoint failed: {failed.get('error', 'unknown error')}"
                f"{then}; a replacement restores the previous checkpoint, if any",
            )
        ]
    if exit_code in (ExitCode.AGENT_FAILURE, ExitCode.RESTORE_FAILURE):
        failed = next(
            (r for r in records if r.get("phase") == "start" and r.get("outcome") == "failed"), {}
        )
        return [
            PodEvent(
                WARNING,
                "AgentFailed",
                f"container {container}: {failed.get('error') or ExitCode(exit_code).meaning}",
            )
        ]
    return []


def measured_throughput(exit_code: int | None, message: str) -> int | None:
    """Bytes per second of the final checkpoint the agent committed (its `commit` line's
    `throughput_bps`), from the termination message of an instance that exited CHECKPOINTED."""
    if exit_code != ExitCode.CHECKPOINTED:
        return None
    for record in reversed(list(agent_lines(message))):
        if record.get("phase") == "commit" and record.get("outcome") == "ok":
            value = record.get("throughput_bps")
            if type(value) is int and value > 0:
                return value
            return None
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


def terminated_containers(
    status: dict[str, Any], containers: Iterable[str]
) -> Iterator[Terminated]:
    """Each terminated instance of a checkpointed container (current and last state)."""
    wanted = set(containers)
    for entry in status.get("containerStatuses") or ():
        if entry.get("name") not in wanted:
            continue
        for which in ("state", "lastState"):
            terminated = (entry.get(which) or {}).get("terminated")
            if not terminated:
                continue
            instance = terminated.get("containerID") or str(terminated.get("finishedAt"))
            code = terminated.get("exitCode")
            yield Terminated(
                entry["name"],
                instance,
                code if isinstance(code, int) else None,
                terminated.get("message") or "",
            )


def started_containers(
    status: dict[str, Any], containers: Iterable[str]
) -> Iterator[tuple[str, str]]:
    """(container, instance id) of each running checkpointed container."""
    wanted = set(containers)
    for entry in status.get("containerStatuses") or ():
        running = (entry.get("state") or {}).get("running")
        if entry.get("name") in wanted and running is not None:
            yield entry["name"], entry.get("containerID") or str(running.get("startedAt"))
