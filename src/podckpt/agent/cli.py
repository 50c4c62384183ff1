"""`podckpt-agent` / `python3 -m podckpt.agent`: the entry point, kept light on purpose.

A fresh start must first move the PID counter above the application's range (pids.py), which
takes tens of milliseconds; so does importing the rest of the agent. When the store obviously
holds nothing to restore, the PID counter is moved while the agent imports itself (by the
bundle's `podckpt-pidfloor`, else in a thread); when it may hold one, the counter is moved as
far as a restore allows: above the PIDs of the tree LATEST's manifest says it holds
(`restore_floor`), else `PRE_RESTORE_FLOOR`, so that little or nothing is left to do after the
restore.
Only what a fresh start needs is imported
before the application starts (see runner.py); dump and restore are imported later.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import time

from . import pids

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn


def main(argv: Sequence[str] | None = None) -> NoReturn:
    started = time.monotonic()
    args = list(sys.argv[1:] if argv is None else argv)
    # A restore, maybe: the counter may go above the tree, or to PRE_RESTORE_FLOOR (pids.py).
    store = store_of(args)
    if surely_fresh(args, store):
        early = pids.early_floor(pids.PID_FLOOR)
    else:
        early = pids.early_floor(restore_floor(store), pre_restore=True)
    from . import log  # noqa: PLC0415 - after the floor started rising
    from .runner import main as run_main  # noqa: PLC0415 - imported while the floor rises

    try:
        run_main(args, started, early)
    except SystemExit as done:
        log.write_termination_message()
        exit_now(done.code)
    except BaseException:
        log.write_termination_message()
        raise
    raise AssertionError("runner.main returned")  # pragma: no cover - it always exits


def exit_now(code: object) -> NoReturn:
    """Exit at once with `code` (as SystemExit would), without the interpreter's finalization.

    The agent is PID 1: the container ends when it exits, and a checkpointed pod's downtime
    runs until then. Finalization (module teardown, garbage collection of everything the
    agent imported) is work for nothing there: measured, tens of milliseconds after the
    `exit` line. Output is flushed first; every file the agent writes is closed by the time
    its phase ends, and its threads (hashing, writeback) are daemons that hold nothing.
    """
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        sys.stderr.write(f"{code}\n")
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def store_of(args: Sequence[str]) -> str | None:
    """`run`'s store directory as its options or the environment give it; None otherwise."""
    if not args or args[0] != "run" or "--" not in args:
        return None
    options = list(args[1 : args.index("--")])
    # `contract.Env.STORE` and `contract.STORE_OPTION`, spelled here because this runs before
    # anything is imported (a unit test checks they agree).
    store = os.environ.get("PODCKPT_STORE")
    for index, option in enumerate(options):
        if option == "--store" and index + 1 < len(options):
            store = options[index + 1]
        elif option.startswith("--store="):
            store = option.partition("=")[2]
    return store


def surely_fresh(args: Sequence[str], store: str | None) -> bool:
    """True when `run`'s store cannot hold a checkpoint to restore: no store, no LATEST, or
    COMPLETED. A store whose lock is held (a dump in progress elsewhere) is not sure."""
    if not args or args[0] != "run" or "--" not in args:
        return False
    if not store:
        return True
    if not os.path.exists(os.path.join(store, "LATEST")):
        return not _locked(os.path.join(store, ".lock"))
    return os.path.exists(os.path.join(store, "COMPLETED"))


#: LATEST's manifest is read for the hint only up to this size (a few KiB in practice).
_HINT_BYTES = 1 << 20


def restore_floor(store: str | None) -> int:
    """How far the PID counter may go before a restore: above the tree LATEST's manifest
    records (`highest_pid`, pids.clearing_floor), else PRE_RESTORE_FLOOR.

    Read before anything is verified, so a hint of how far to burn and no more: restore.py
    clears the range again from the verified manifest of the generation it restores. The
    layout (`<store>/LATEST`, `generations/<name>/manifest.json`) is store.py's, spelled here
    because this runs before anything is imported (a unit test checks they agree)."""
    if not store:
        return pids.PRE_RESTORE_FLOOR
    try:
        name = _read_regular(os.path.join(store, "LATEST"), 256).decode().strip()
        if not name or "/" in name or name.startswith("."):
            return pids.PRE_RESTORE_FLOOR
        path = os.path.join(store, "generations", name, "manifest.json")
        text = _read_regular(path, _HINT_BYTES)
        import json  # noqa: PLC0415 - only on this path

        body = json.loads(text)
    except (OSError, ValueError):
        return pids.PRE_RESTORE_FLOOR
    highest = body.get("highest_pid") if isinstance(body, dict) else None
    return pids.clearing_floor(highest) or pids.PRE_RESTORE_FLOOR


def _read_regular(path: str, limit: int) -> bytes:
    """A regular file of at most `limit` bytes, not through a symbolic link; a FIFO or a
    device would otherwise block or flood the agent's start. Raises OSError or ValueError."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            raise ValueError(f"{path}: not a regular file of at most {limit} bytes")
        return os.read(fd, limit + 1)[:limit]
    finally:
        os.close(fd)


def _locked(path: str) -> bool:
    import fcntl  # noqa: PLC0415

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
