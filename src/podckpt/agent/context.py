"""What dump and restore share: the store, CRIU, the mode CRIU runs in, the paths never saved."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .criu import Criu
from .store import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .deadline import Throughput
    from .pids import EarlyFloor


@dataclasses.dataclass
class Context:
    store: Store
    criu: Criu
    #: CRIU's privileged mode (CAP_SYS_ADMIN and friends) or `--unprivileged`.
    privileged: bool
    #: Never saved as application files: the store itself, the agent's bundle.
    exclude: list[str]
    #: Wall-clock time of the application's first (fresh) start, carried across restores: a
    #: root-filesystem file changed since then is in the writable layer and must be saved.
    lineage_start: float
    #: What this container runs (argv, and the image when the webhook names it): a
    #: generation dumped from something else is never restored into it (a rolling update
    #: must not resume the old program over the new image's files).
    workload: dict[str, object] = dataclasses.field(default_factory=dict)
    #: Where this container runs (pod uid, the node's boot id): a generation made by this same
    #: pod in this same boot is never restored (the container was restarted inside its pod:
    #: liveness probe, OOM kill, crash).
    origin: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Where the restored tree's stdin/stdout/stderr come from (the agent's own, normally).
    stdio_fds: tuple[int, int, int] = (0, 1, 2)
    #: This store's measured dump throughput (the last manifest's), for the SIGTERM deadline.
    throughput: Throughput | None = None
    #: The PID counter moving to PRE_RESTORE_FLOOR beside the start-up: done before CRIU runs.
    pre_restore_floor: EarlyFloor | None = None

    @property
    def store_root(self) -> Path:
        return self.store.root
