"""How far CRIU has filled the memory of the tree it restores: the pace of the page verifier.

Why pace at all. The page verifier (integrity.PageVerifier) hashes the page images while CRIU
reads them, so that whichever of the two reads a page second finds it in the page cache. In a
pod whose memory limit is close to the application's size that only holds if the two stay
close: the page cache is charged to the pod's memory cgroup and reclaimed as the restored
memory grows, and the reclaim may take pages one of the two has yet to read. Started before
CRIU and hashing at about CRIU's speed on each core, the unpaced verifier ran ahead and kept
the cgroup at its limit (docs/benchmarks.md "End to end", a 1 GiB pod with 128 MiB headroom:
~120k limit hits per restore). The verifier therefore starts a chunk only `lead` bytes ahead
of what CRIU has filled, and drops what both have read from the page cache
(PageVerifier._drop_behind, with `passed()`).

The measure. CRIU reads each task's pages into that task's premapped memory, in one `preadv`
per contiguous range, so the bytes read (`/proc/PID/io`) move only once a whole range is in;
the resident memory (`/proc/PID/statm`) grows with every page copied. `TreeFill` sums, over
the restored tree (the root and its descendants), each task's growth since it was first seen.

Pacing saves reads and never holds a restore: when the measure cannot be read, has not
grown for `STALL_S` once it grew, or never grew within `START_S` (CRIU's set-up, before the
first page, takes a small part of that), pacing ends for good and the verifier runs as fast
as it can, as it did unpaced; the caller also ends it when CRIU exits (the tree is stopped,
every page in). A stalled verifier costs nothing meanwhile: CRIU never waits for it.
"""

from __future__ import annotations

import os
import threading
import time

#: How far (bytes) the verifier may start a chunk ahead of CRIU (it then reads up to a chunk
#: further): small beside the page cache a pod near its limit still has (the end-to-end
#: benchmark's: about 70 MiB once the application's memory is back).
LEAD_BYTES = 16 << 20
#: The measure not growing for this long, once it grew, ends pacing (CRIU busy elsewhere).
STALL_S = 0.5
#: The measure not growing at all for this long ends pacing (a measure that does not see
#: CRIU's reads, whatever the reason): the verifier is never held longer.
START_S = 5.0
#: Growth below this is CRIU's own bookkeeping, not pages yet: the stall clock waits.
_STARTED = 1 << 20
#: /proc is read at most this often, whichever thread asks; and for a large tree, whose walk
#: takes longer, at most a tenth of the time.
SAMPLE_S = 0.002
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


class TreeFill:
    """The bytes of memory CRIU has filled in the tree it restores at `root`, as a pace.

    `allows(position)`: may a reader start at byte `position` of the page images now?
    Thread-safe; `release()` ends pacing (every position allowed from then on)."""

    def __init__(
        self,
        root: int,
        *,
        lead: int = LEAD_BYTES,
        stall_s: float = STALL_S,
        start_s: float = START_S,
        proc: str = "/proc",
    ) -> None:
        self.root = root
        self.lead = lead
        self.stall_s = stall_s
        self.start_s = start_s
        self._proc = proc
        self._lock = threading.Lock()
        self._base: dict[int, int] = {}
        self.filled = 0
        #: Why pacing ended (None while it lasts): "released", "stalled", "never grew",
        #: "unreadable".
        self.ended: str | None = None
        #: How many times a reader was told to wait.
        self.waits = 0
        self._sampled = 0.0
        self._interval = SAMPLE_S
        self._created = time.monotonic()
        self._grew: float | None = None

    def allows(self, position: int) -> bool:
        with self._lock:
            if self.ended is not None:
                return True
            now = time.monotonic()
            if now - self._sampled >= self._interval:
                filled = self._measure()
                self._sampled = time.monotonic()
                self._interval = max(SAMPLE_S, 10 * (self._sampled - now))
                if filled is None:
                    self.ended = "unreadable"
                    return True
                if filled > self.filled:
                    self.filled = filled
                    if filled >= _STARTED:
                        self._grew = now
                elif self._grew is not None and now - self._grew > self.stall_s:
                    self.ended = "stalled"
                    return True
                elif self._grew is None and now - self._created > self.start_s:
                    self.ended = "never grew"
                    return True
            if position <= self.filled + self.lead:
                return True
            self.waits += 1
            return False

    def passed(self) -> int:
        """Bytes of the page images CRIU is done with: what it has filled; all once it exited
        (`release`)."""
        with self._lock:
            return 1 << 62 if self.ended == "released" else self.filled

    def release(self) -> None:
        with self._lock:
            if self.ended is None:
                self.ended = "released"

    def summary(self) -> dict[str, object]:
        with self._lock:
            return {
                "ended": self.ended,
                "waits": self.waits,
                "filled_mib": round(self.filled / (1 << 20), 1),
            }

    def _measure(self) -> int | None:
        """Pages grown in the tree since each task was first seen, in bytes; None when the
        tree's /proc entries exist but cannot be read (another user's: no pacing)."""
        grown = 0
        pending = [self.root]
        while pending:
            pid = pending.pop()
            try:
                resident = int(_read(f"{self._proc}/{pid}/statm").split()[1])
                children = _read(f"{self._proc}/{pid}/task/{pid}/children").split()
            except PermissionError:
                return None
            except (OSError, ValueError, IndexError):
                continue  # not forked yet, or gone
            base = self._base.setdefault(pid, resident)
            grown += max(0, resident - base)
            pending.extend(int(child) for child in children if child.isdigit())
        return grown * _PAGE
