"""Running `criu restore` for one generation: the saved files put back, the container's stdio
passed in place of the dumped one, a lazy-pages daemon when the restore is lazy, and the
restored tree left stopped as the agent's own child (`--restore-sibling --leave-stopped`).

Kept apart from restore.py (which chooses the generation and continues the tree) because
this is the part that talks to CRIU, and the one whose failures leave something to clean up:
the files it put back, and the zombies a failed `--restore-sibling` leaves (reap_leftovers).
"""

from __future__ import annotations

import os
import re

from podckpt.api.criuopts import has

from . import criu, files, lazy, log, stdio
from .errors import CriuFailedError, CriuRunError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .context import Context
    from .generations import Generation
    from .manifest import Manifest

_FD_BASE = 100  # the new stdio is passed to CRIU at fds 100-102, its own stdio stays captured


def inherit_map(streams: dict[str, str]) -> dict[int, str]:
    """fd number CRIU gets → dumped identity it replaces (`pipe:[1234]`, `tty[...]`,
    `file[...]`), once per identity (stdio.inherit_map)."""
    return stdio.inherit_map(streams, _FD_BASE)


def lazy_transfer(
    ctx: Context, gen: Generation, manifest: Manifest, mode: str | None
) -> lazy.LazyTransfer | None:
    """A lazy-pages daemon, spawned, when this restore is lazy (lazy.choose), else None. It
    listens before the restore connects, or the restore runs again (criu_restore)."""
    chosen, why_not = lazy.choose(ctx, gen, manifest, mode)
    if not chosen:
        if why_not is not None and mode == "lazy":
            log.emit("restore", "full", generation=gen.name, why=why_not)
        return None
    transfer = lazy.LazyTransfer(ctx, gen)
    try:
        transfer.spawn_daemon()
    except CriuRunError as exc:
        transfer.close()
        ctx.store.mark(gen, lazy.LAZY_FAILED)
        log.emit("restore", "full", generation=gen.name, why=f"lazy restore unavailable: {exc}")
        return None
    return transfer


def criu_restore(
    ctx: Context,
    gen: Generation,
    manifest: Manifest,
    root: int,
    transfer: lazy.LazyTransfer | None,
    *,
    options: tuple[str, ...] = (),
) -> tuple[criu.CriuResult, list[str], str | None]:
    """Put the saved files back and run CRIU; the restored tree is left stopped. Returns
    CRIU's result, the files put back and, when `tcp-established` could not be kept, why.

    With `tcp-established`, a restore that fails (the pod's IP is not the dumped one, or the
    network does not allow it) is run once more with `--tcp-close`: the application comes
    back with its connections closed, as without the option."""
    written = files.put_back(gen.path, manifest.setid_files)
    inherit = inherit_map(manifest.stdio)
    passed: list[int] = []
    closed_because: str | None = None

    def run(chosen: tuple[str, ...]) -> criu.CriuResult:
        args = criu.restore_args(
            gen.images, None, inherit, privileged=ctx.privileged, options=chosen
        )
        if transfer is not None:
            args += transfer.restore_args()
        return criu.run(ctx.criu, "restore", args, gen.path / "restore.log", pass_fds=passed)

    try:
        for fd in inherit:
            os.dup2(ctx.stdio_fds[fd - _FD_BASE], fd, inheritable=True)
            passed.append(fd)
        try:
            result = _run_beside_the_daemon(run, options, transfer)
        except CriuFailedError as exc:
            if not has(options, "tcp-established") or transfer is not None:
                raise
            closed_because = str(exc)
            reap_leftovers()
            result = run((*(o for o in options if o != "tcp-established"), "tcp-close"))
        _check_child(root)
    except BaseException:
        files.remove(written)
        raise
    finally:
        for fd in passed:
            os.close(fd)
    return result, written, closed_because


#: What `criu restore --lazy-pages` logs when the daemon's socket is not there yet.
_NO_DAEMON = re.compile(r"connect to \S*lazy-pages\.socket failed")


def _run_beside_the_daemon(
    run: Callable[[tuple[str, ...]], criu.CriuResult],
    options: tuple[str, ...],
    transfer: lazy.LazyTransfer | None,
) -> criu.CriuResult:
    """Run the restore while the lazy-pages daemon still starts: both begin with the same
    kernel probes (40-60 ms each, privileged), which overlap; the restore connects to the
    daemon's socket only after its own probes and its reading of the images, by when the daemon
    listens, almost always. When it did not, CRIU fails at that connect, before it has created
    anything: the restore runs again once the daemon listens (raising, like the daemon's
    start, when the daemon fails instead)."""
    if transfer is None or transfer.listening():
        return run(options)
    try:
        return run(options)
    except CriuFailedError as exc:
        if not any(_NO_DAEMON.search(line) for line in exc.last_lines):
            raise
    transfer.wait_listening()
    transfer.restore_retried = True
    return run(options)


def _check_child(pid: int) -> None:
    """CRIU restored the root at its dumped PID as the agent's child (--restore-sibling)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            ppid = next((line.split()[1] for line in status if line.startswith("PPid:")), "")
    except OSError:
        ppid = ""
    if ppid != str(os.getpid()):
        raise CriuRunError(f"criu restore exited 0 but process {pid} is not the agent's child")


def reap_leftovers(timeout: float = 2.0) -> None:
    """Reap what a failed `criu restore --restore-sibling` left: it kills the tasks it had
    created, which are the agent's children, so they stay zombies holding their PIDs until
    the agent reaps them, and the next (older) generation's restore then fails with `Can't
    fork for 301: File exists` (found by the fault-injection suite). Before the application
    runs, every child of the agent is such a leftover."""
    import time  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
