"""One JSON line per phase on the agent's stderr (the container's log).

A line carries `ts`, `phase` (start, restore, fresh-start, dump, commit, exit...), `outcome`
(ok, failed, skipped...), `duration_s` and whatever the phase knows, e.g. CRIU's own statistics
under `criu`. JSON because log pipelines parse it; one line because a phase is one event.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_STDERR = 2


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
