"""Each checkpoint's summary on the identity's PVC: written by the controller, read by
`kubectl podckpt` (standard library only, like the rest of `podckpt.api`).

Events expire after an hour; a PVC lives as long as its checkpoints. So the controller folds
every agent phase line it reads (termination messages, log heads) into one JSON annotation of
the checkpoint PVC, `<domain>/checkpoints` (domain `podckpt.io` by default):

    {"version": 1,
     "containers": {
       "app": {
         "generations": [{"generation": "20250101T000000Z-3", "bytes": 1048576,
                          "at": "2025-01-01T00:00:00.123Z", "reason": "sigterm"}],
         "last_checkpoint": {"outcome": "ok", "generation": ..., "bytes": ..., "dump_s": ...,
                             "commit_s": ..., "app_stopped_s": ..., "at": ..., "pod": ...},
         "last_restore": {"outcome": "ok" | "failed" | "fallback-fresh" | "skipped",
                          "generation": ..., "duration_s": ..., "at": ..., "pod": ...,
                          "why": ...}}}}

`apply()` is the one place that knows how a phase line changes that record; each container
keeps the ids of the last lines it applied (`applied`, lines of every phase), so a line read
again changes nothing, and the controller counts and announces a line only when `apply()`
changed the summary. It mirrors what the agent's store does (a commit adds a generation and
prunes older ones; a restore retires the restored generation and all older ones; a fresh
start or a completed application retires all).
Generations are only as current as the lines the controller has seen: the store on the volume
is the truth, this is its journal.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

DEFAULT_DOMAIN = "podckpt.io"
ANNOTATION = "checkpoints"
FORMAT_VERSION = 1
#: Bound on the generations listed per container (the store keeps at most 100).
MAX_GENERATIONS = 100
#: Ids of the lines already applied, per container (the journal's memory).
MAX_APPLIED = 256
_ERROR_CHARS = 300


def annotation(domain: str = DEFAULT_DOMAIN) -> str:
    return f"{domain}/{ANNOTATION}"


def empty() -> dict[str, Any]:
    return {"version": FORMAT_VERSION, "containers": {}}


def parse(text: str | None) -> dict[str, Any]:
    """The summary in an annotation value; an absent or unreadable one is empty (a summary is
    advice: a bad one must not stop the controller or the CLI)."""
    if not text:
        return empty()
    try:
        data = json.loads(text)
    except ValueError:
        return empty()
    if not isinstance(data, dict) or not isinstance(data.get("containers"), dict):
        return empty()
    return data


def dump(summary: dict[str, Any]) -> str:
    return json.dumps(summary, separators=(",", ":"), sort_keys=True)


def line_id(record: dict[str, Any]) -> str:
    """A short digest of one agent line (its time stamp included): the same line read twice
    (a log head re-read, a termination message seen by a new leader) has the same id."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _seq(name: object) -> int | None:
    head, sep, tail = str(name).rpartition("-")
    return int(tail) if sep and head and tail.isdigit() else None


def _error(record: dict[str, Any]) -> str | None:
    text = record.get("error") or record.get("why")
    return str(text)[:_ERROR_CHARS] if text else None


def apply(
    summary: dict[str, Any], container: str, record: dict[str, Any], pod: str
) -> dict[str, Any]:
    """`summary` updated by one agent phase line of `container` in `pod` (a new dict; pure).
    Applying the same lines again gives the same summary, so the controller may re-read a
    log head or a termination message after a restart or a leader change."""
    phase, outcome = record.get("phase"), record.get("outcome")
    if not phase:
        return summary
    line = line_id(record)
    if line in ((summary.get("containers") or {}).get(container) or {}).get("applied", ()):
        return summary  # already in the journal: re-reading a log never counts twice
    at = record.get("ts")
    new = copy.deepcopy(summary)
    new.setdefault("version", FORMAT_VERSION)
    entry: dict[str, Any] = new.setdefault("containers", {}).setdefault(container, {})
    entry["applied"] = [*entry.get("applied", ()), line][-MAX_APPLIED:]
    generations: list[dict[str, Any]] = entry.setdefault("generations", [])
    gen = record.get("generation")
    match phase, outcome:
        case "dump", "ok":
            entry["pending_dump"] = {"generation": gen, "dump_s": record.get("duration_s")}
        case "dump", "failed":
            entry.pop("pending_dump", None)
            entry["last_checkpoint"] = {
                "outcome": "failed",
                "reason": record.get("reason"),
                "error": _error(record),
                "at": at,
                "pod": pod,
            }
        case "commit", "ok":
            pending = entry.pop("pending_dump", None) or {}
            if not any(g.get("generation") == gen for g in generations):
                generations.append(
                    {"generation": gen, "bytes": record.get("bytes"), "at": at, "pod": pod}
                )
            pruned = set(record.get("pruned") or ())
            entry["generations"] = [g for g in generations if g.get("generation") not in pruned][
                -MAX_GENERATIONS:
            ]
            entry["last_checkpoint"] = {
                "outcome": "ok",
                "generation": gen,
                "bytes": record.get("bytes"),
                "dump_s": pending.get("dump_s") if pending.get("generation") == gen else None,
                "commit_s": record.get("duration_s"),
                "app_stopped_s": record.get("app_stopped_s"),
                "at": at,
                "pod": pod,
            }
        case "restore", ("ok" | "failed" | "refused" | "fallback-fresh" | "skipped"):
            if outcome == "ok":
                restored = _seq(gen)  # it and every older generation are retired
                entry["generations"] = [
                    g
                    for g in generations
                    if restored is None or (_seq(g.get("generation")) or 0) > restored
                ]
            elif outcome in ("failed", "refused"):
                for g in generations:
                    if g.get("generation") == gen:
                        g["failed"] = True
            else:  # a fresh start: the store retires every generation
                entry["generations"] = []
            entry["last_restore"] = {
                "outcome": outcome,
                "generation": gen,
                "duration_s": record.get("duration_s"),
                "why": _error(record),
                "at": at,
                "pod": pod,
            }
        case "exit", "application-exited" if record.get("store_completed"):
            entry["generations"] = []
            entry["completed"] = {"at": at, "pod": pod, "code": record.get("code")}
    return new


def fold(
    summary: dict[str, Any], container: str, records: list[dict[str, Any]], pod: str
) -> dict[str, Any]:
    """`summary` after every line of `records`, in order."""
    for record in records:
        summary = apply(summary, container, record, pod)
    return summary
