"""One JSON line per phase on the agent's stderr (the container's log).

A line carries `ts`, `phase` (start, restore, fresh-start, dump, commit, exit...), `outcome`
(ok, failed, skipped...), `duration_s` and whatever the phase knows, e.g. CRIU's own statistics
under `criu`. JSON because log pipelines parse it; one line because a phase is one event.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import sys
import time

from podckpt.api import contract

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_STDERR = 2

#: The kubelet's default `terminationMessagePath`; it exists only inside a pod.
TERMINATION_LOG = os.environ.get(contract.Env.TERMINATION_LOG, "/dev/termination-log")
#: The kubelet keeps at most 4096 bytes of a termination message.
TERMINATION_LIMIT = 4096
_recent: collections.deque[str] = collections.deque(maxlen=64)


def emit(phase: str, outcome: str, duration_s: float | None = None, **fields: Any) -> None:
    """Write one log line. Never raises: a log line must not kill the agent."""
    record: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        + f".{int(time.time() * 1000) % 1000:03d}Z",
        "agent": "podckpt",
        "phase": phase,
        "outcome": outcome,
    }
    if duration_s is not None:
        record["duration_s"] = round(duration_s, 4)
    record.update({k: v for k, v in fields.items() if v is not None})
    line = json.dumps(record, default=str, separators=(",", ":")) + "\n"
    _recent.append(line)
    try:
        os.write(_STDERR, line.encode())
    except OSError:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(line)


class Timer:
    """Monotonic stopwatch for `duration_s`."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def termination_message(limit: int = TERMINATION_LIMIT) -> str:
    """The newest lines that fit in `limit` bytes, oldest first."""
    kept: list[str] = []
    size = 0
    for line in reversed(_recent):
        size += len(line.encode())
        if size > limit:
            break
        kept.append(line)
    return "".join(reversed(kept))


def write_termination_message(path: str = TERMINATION_LOG) -> None:
    """Leave the last phase lines (the checkpoint's commit, or why it failed) in the
    container's termination message, where the controller reads them after the pod's log is
    gone. Written only where the kubelet provides the file; never raises."""
    if not _recent or not os.path.exists(path):
        return
    with contextlib.suppress(OSError), open(path, "w", encoding="utf-8") as file:
        file.write(termination_message())
