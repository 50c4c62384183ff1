"""Lazy restore: the application runs as soon as CRIU has rebuilt its processes; its memory
follows on demand and in the background.

`criu lazy-pages` (a daemon, the agent's child) serves the page images through userfaultfd:
`criu restore --lazy-pages` registers the restored tasks' anonymous memory with it instead of
copying it, the tree is continued at once, a page the application touches is copied in when it
faults, and the daemon copies all the others in the background, then exits. Its exit is the
moment the last page is in (`lazy-pages ok`). Until then the generation stays on the volume.

What it costs (measured in the sandbox, CRIU 4.2.1): CRIU's `--unprivileged` mode has no lazy
pages (it never probes userfaultfd), so both the daemon and the restore run in CRIU's privileged
mode, which needs CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SYS_TIME, CAP_SYS_CHROOT and CAP_SETPCAP;
and userfaultfd with kernel-fault handling needs CAP_SYS_PTRACE, or the node's
`vm.unprivileged_userfaultfd=1`. The webhook grants none of these: a container that has them
(its own securityContext) can restore lazily; any other restores in full, saying why.

Failure must never become a silent hang or silent corruption:
- the daemon exits non-zero, or stops reading for LAZY_STALL_S while pages are missing, or the
  page images do not match their checksums (verified while the daemon reads them): the
  application is killed, the restore counts as failed (`restore failed`, `mode: lazy`), the
  generation is marked LAZY-FAILED (or FAILED for a checksum mismatch) and the agent restores
  again, in full;
- when the daemon dies, the kernel would let the application's next faults on missing pages
  read zeros (the userfaultfd is released with the daemon's last file descriptor). The agent
  therefore holds a duplicate of every userfaultfd the daemon holds (pidfd_getfd): a fault then
  waits, and the agent kills the application before it reads anything.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import time

from . import criu, images, integrity, log, pids, proctree
from .errors import AgentError, CriuFailedError, CriuRunError, GenerationInvalidError
from .generations import FAILED
from .log import Timer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from .context import Context
    from .generations import Generation
    from .manifest import FileEntry, Manifest

#: Marker: the last lazy restore of this generation failed; restore it in full.
LAZY_FAILED = "LAZY-FAILED"
#: Without `restore-mode`, checkpoints at least this big restore lazily where the container
#: allows it (measured: docs/benchmarks.md, "Agent").
AUTO_LAZY_BYTES = 512 << 20
#: The daemon must keep reading while pages are missing; after this long without progress the
#: page source counts as failed.
LAZY_STALL_S = 30.0
#: Why a lazy restore is full when CRIU marked no page lazy at the dump (images.py).
NO_LAZY_PAGES = (
    "CRIU marked no page of this checkpoint lazy (a stack pointer was page-aligned at the dump)"
)
_CHECK_S = 1.0
#: At most this many PIDs are burnt to restore again in the same container (pids.py).
_MAX_REBURN = 20_000
_READY_TIMEOUT_S = 60.0
_SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282}
_SYS_PIDFD_GETFD = 438
_UFFD_TARGET = "anon_inode:[userfaultfd]"


class LazyRestoreFailed(GenerationInvalidError):
    """`criu restore --lazy-pages` failed: the same generation is tried again in full."""


def _libc() -> Any:
    import ctypes  # noqa: PLC0415 - only for lazy restores

    return ctypes.CDLL(None, use_errno=True)


def unavailable(ctx: Context) -> str | None:
    """Why this container cannot restore lazily; None when it can."""
    if not ctx.privileged:
        return (
            "lazy restore needs CRIU's privileged mode (CAP_SYS_ADMIN, CAP_NET_ADMIN,"
            " CAP_SYS_TIME, CAP_SYS_CHROOT, CAP_SETPCAP): CRIU's --unprivileged mode has no"
            " lazy pages"
        )
    number = _SYS_USERFAULTFD.get(platform.machine())
    if number is None:
        return f"lazy restore: no userfaultfd syscall number known for {platform.machine()}"
    import ctypes  # noqa: PLC0415 - only for lazy restores

    libc = _libc()
    fd = libc.syscall(number, os.O_CLOEXEC | os.O_NONBLOCK)
    if fd < 0:
        err = ctypes.get_errno()
        return (
            f"userfaultfd is not permitted ({os.strerror(err)}): lazy restore needs"
            " CAP_SYS_PTRACE in the container, or vm.unprivileged_userfaultfd=1 on the node"
        )
    os.close(fd)
    return None


def choose(
    ctx: Context,
    gen: Generation,
    manifest: Manifest,
    requested: str | None,
) -> tuple[bool, str | None]:
    """(lazy?, why not when lazy was asked for or would have been chosen)."""
    if requested == "full":
        return False, None
    big = manifest.total_bytes >= AUTO_LAZY_BYTES
    if requested is None and not big:
        return False, None
    if (gen.path / LAZY_FAILED).exists():
        return False, "the last lazy restore of this generation failed"
    reason = unavailable(ctx)
    if reason is not None:
        return False, reason
    if images.has_lazy_pages(gen.images) is False:
        # CRIU would copy every page itself (images.py says when): a daemon would serve
        # nothing, and the restore line would call a full restore lazy.
        return False, NO_LAZY_PAGES
    return True, None


def highest_pid(root: int) -> int:
    """The highest PID or TID of the tree of `root` (a restore again must stay clear of it)."""
    return proctree.highest_id(proctree.members(root))


class LazyTransfer:
    """One lazy restore's page source: the daemon, the checksum verification beside it, and the
    userfaultfds the agent holds. Lives from before `criu restore` until the last page is in."""

    def __init__(self, ctx: Context, gen: Generation) -> None:
        self.ctx = ctx
        self.gen = gen
        # CRIU's socket between the daemon and the restore (a relative name in this directory);
        # outside the generation, whose files are exactly those its manifest lists.
        self.workdir = ctx.store.root / ".lazy-pages"
        self._pid: int | None = None
        self._ready_r: int | None = None  # the daemon's --status-fd, until it said it listens
        self._closed = False
        #: Whether `criu restore` had to run again: it started before the daemon listened and
        #: found no socket (criurestore.py).
        self.restore_retried = False
        self.verifier: integrity.PageVerifier | None = None
        self.timer = Timer()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self._pidfd: int | None = None
        self._held: dict[int, int] = {}  # inode -> our duplicate
        self._exit_status: int | None = None
        self._rchar = -1
        self._progress_at = time.monotonic()
        self.next_check = time.monotonic() + _CHECK_S
        #: The highest PID or TID of the restored tree (a restore again must stay clear of it).
        self.highest_pid = 0
        self._pages_logged = False
        #: How long the restore waited for the daemon to listen, for the restore line: 0 when
        #: the restore's own start covered the daemon's.
        self.daemon_wait_s = 0.0

    @property
    def pid(self) -> int | None:
        return self._pid

    # -- before and during CRIU's restore -------------------------------------------------

    def spawn_daemon(self) -> None:
        """Start `criu lazy-pages`, without waiting for it to listen: its kernel probes (most
        of its start, 40-60 ms privileged) overlap the restore's own (criurestore.py).
        Raises CriuRunError."""
        self.workdir.mkdir(mode=0o700, exist_ok=True)
        log_path = self.gen.path / "lazy-pages.log"
        ready_r, ready_w = os.pipe()
        argv = [
            self.ctx.criu.path, "lazy-pages", "-D", str(self.gen.images), "-W",
            str(self.workdir), "--status-fd", str(ready_w), "-o", str(log_path), "-v4",
        ]  # fmt: skip
        try:
            self._pid = criu.start(argv, "lazy-pages", (ready_w,))
        except CriuRunError:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        self._ready_r = ready_r
        try:
            self._pidfd = os.pidfd_open(self._pid)
        except OSError as exc:
            self.abort()
            raise CriuRunError(f"cannot hold criu lazy-pages: {exc}") from exc

    def listening(self) -> bool:
        """Whether the daemon said it listens, without waiting for it (raises as
        wait_listening when it said it failed)."""
        if self._ready_r is None:
            return True
        import select  # noqa: PLC0415

        if select.select([self._ready_r], [], [], 0)[0]:
            self.wait_listening()  # it answered: returns at once, or raises
            return True
        return False

    def wait_listening(self) -> None:
        """Wait until the daemon listens. Raises CriuFailedError when it exits first or does
        not listen within _READY_TIMEOUT_S (the daemon is then stopped)."""
        if self._ready_r is None:
            return
        waiting = time.monotonic()
        import select  # noqa: PLC0415

        readable, _, _ = select.select([self._ready_r], [], [], _READY_TIMEOUT_S)
        status = os.read(self._ready_r, 1) if readable else b""
        os.close(self._ready_r)
        self._ready_r = None
        if status != b"\0":
            self.abort()
            code = (
                os.waitstatus_to_exitcode(self._exit_status)
                if self._exit_status is not None
                else -9
            )
            log_path = self.gen.path / "lazy-pages.log"
            raise CriuFailedError("lazy-pages", code, str(log_path), criu.log_tail(log_path))
        self.daemon_wait_s += time.monotonic() - waiting

    def start_daemon(self) -> None:
        """Start `criu lazy-pages` and wait until it listens."""
        self.spawn_daemon()
        self.wait_listening()

    def restore_args(self) -> list[str]:
        return ["--lazy-pages", "-W", str(self.workdir)]

    def started(self, root: int, deferred: Mapping[str, FileEntry]) -> None:
        """CRIU's restore returned: hold the userfaultfds, verify the page images."""
        self.highest_pid = highest_pid(root)
        self._hold_uffds()
        # Below the application and the daemon in priority: it decides nothing while they run,
        # and takes what CPU they leave.
        self.verifier = integrity.PageVerifier(
            self.gen.path, deferred, wake_fd=self.wake_w, nice=10
        )
        self.verifier.start()

    # -- while the application runs ------------------------------------------------------

    def _hold_uffds(self) -> None:
        pid, pidfd = self.pid, self._pidfd
        if pid is None or pidfd is None:
            return
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            return
        for name in names:
            path = f"/proc/{pid}/fd/{name}"
            try:
                if os.readlink(path) != _UFFD_TARGET:
                    continue
                inode = os.stat(path).st_ino
            except OSError:
                continue
            if inode in self._held:
                continue
            fd = _libc().syscall(_SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd >= 0:
                self._held[inode] = fd

    def exited(self, status: int) -> None:
        """The daemon was reaped (by the supervisor's waitpid(-1), or here)."""
        self._exit_status = status

    def poll(self) -> str:
        """'running', 'done', or the reason the page source failed."""
        with contextlib.suppress(OSError):
            os.read(self.wake_r, 64)
        if self.verifier is not None and self.verifier.done():
            error = self.verifier.result()
            if error is not None:
                return f"page image {error}"
        if self._exit_status is not None:
            code = os.waitstatus_to_exitcode(self._exit_status)
            if code < 0:
                return f"criu lazy-pages failed: killed by signal {-code}"
            if code != 0:
                tail = criu.log_tail(self.gen.path / "lazy-pages.log")
                return f"criu lazy-pages failed with exit code {code}: " + (
                    " | ".join(tail) or "no error lines"
                )
            self._pages_in()
            if self.verifier is None or self.verifier.done():
                return "done"
            return "running"
        now = time.monotonic()
        if now >= self.next_check:
            self.next_check = now + _CHECK_S
            self._hold_uffds()
            rchar = self._read_chars()
            if rchar != self._rchar:
                self._rchar, self._progress_at = rchar, now
            elif now - self._progress_at > LAZY_STALL_S:
                return f"criu lazy-pages read nothing for {LAZY_STALL_S:.0f} s"
        return "running"

    def _read_chars(self) -> int:
        try:
            with open(f"/proc/{self.pid}/io") as io:
                for line in io:
                    if line.startswith("rchar:"):
                        return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return -1

    def wait(self, timeout: float) -> str:
        """Block until the transfer is done or failed (SIGTERM and checkpoints need every
        page in). Reaps the daemon itself."""
        deadline = time.monotonic() + timeout
        while True:
            if self._exit_status is None and self.pid is not None:
                with contextlib.suppress(ChildProcessError):
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                    if pid:
                        self.exited(status)
            outcome = self.poll()
            if outcome != "running":
                return outcome
            if time.monotonic() > deadline:
                return f"the lazy transfer did not finish within {timeout:.0f} s"
            time.sleep(0.005)

    def _pages_in(self) -> None:
        """The daemon exited 0: the last page is in. Said once; the userfaultfds held for a
        failing daemon are let go at once (a fault on a page removed since would wait)."""
        if self._pages_logged:
            return
        self._pages_logged = True
        self._release_uffds()
        log.emit(
            "lazy-pages",
            "ok",
            self.timer.elapsed(),
            generation=self.gen.name,
            why="the last page is in",
            verified=self.verifier is None or self.verifier.done(),
        )

    def _release_uffds(self) -> None:
        for fd in self._held.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._held.clear()

    def bytes_verified(self) -> int:
        return self.verifier.bytes if self.verifier is not None else 0

    # -- the supervisor's side --------------------------------------------------------------

    def step(self, root: int | None, *, diagnosis: bool) -> str:
        """Act on the transfer's state: 'running'; 'done' (logged, the generation and older
        ones retired); or the failure's reason (logged, the application killed and reaped, the
        generation marked: restore again, in full)."""
        outcome = self.poll()
        if outcome == "running":
            return outcome
        if outcome == "done":
            self.close()
            log.emit(
                "lazy-pages",
                "verified",
                self.timer.elapsed(),
                generation=self.gen.name,
                bytes=self.bytes_verified(),
                why="every page image matched its checksums",
            )
            with contextlib.suppress(AgentError), self.ctx.store.lock(timeout=10.0):
                self.ctx.store.retire(self.gen, diagnosis=diagnosis)
            return outcome
        self.fail(root, outcome)
        return outcome

    def fail(self, root: int | None, reason: str) -> bool:
        """The page source failed: the application must not run on (its missing memory would
        read as zeros); kill it, keep the generation for a full restore (or mark it FAILED
        when its images are damaged). Returns whether this container can restore again: its
        PID counter is moved above every PID the killed tree had, or CRIU's own helpers would
        take them (pids.py); False when that is too far away (then the container restarts)."""
        highest = self.highest_pid
        if root is not None:
            highest = max(highest, highest_pid(root))
            proctree.kill_tree(root)
        self.abort()
        from .criurestore import reap_leftovers  # noqa: PLC0415 - criurestore imports this module

        reap_leftovers()
        again = highest + 1 - pids.last_pid() <= _MAX_REBURN
        if again:
            pids.raise_floor(highest + 1)
        damaged = reason.startswith("page image ")
        self.ctx.store.mark(self.gen, FAILED if damaged else LAZY_FAILED)
        log.emit(
            "lazy-pages", "failed", self.timer.elapsed(), generation=self.gen.name, error=reason
        )
        log.emit(
            "restore",
            "failed",
            generation=self.gen.name,
            mode="lazy",
            error=reason,
            then="application stopped; "
            + ("an older generation or a fresh start" if damaged else "restoring it in full"),
        )
        return again

    def abort(self) -> None:
        """Stop the daemon (when still running) and let go of everything held."""
        if self._pid is not None and self._exit_status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(self._pid, 0)
                self.exited(status)
        self.close()

    def close(self) -> None:
        if self._closed:  # abort() closes, and its callers may close again: no fd twice
            return
        self._closed = True
        if self.verifier is not None:
            self.verifier.cancel()
        self._release_uffds()
        for owned in (self._pidfd, self.wake_r, self.wake_w, self._ready_r):
            if owned is not None:
                with contextlib.suppress(OSError):
                    os.close(owned)
        self._pidfd = self._ready_r = None
        import shutil  # noqa: PLC0415

        shutil.rmtree(self.workdir, ignore_errors=True)
