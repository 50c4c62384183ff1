"""Error types of the agent. Each failure the agent can report is a type, so that callers
decide by type (never by message) and the message is what the user reads in the log."""

from __future__ import annotations

import errno

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path


class AgentError(Exception):
    """A failure the agent reports in one line and acts on (exit code, fallback)."""


class UsageError(AgentError):
    """Bad command line or bad keys: the user must fix the pod spec."""


class CriuMissingError(AgentError):
    """No CRIU binary could be found or executed."""


class CriuTooOldError(AgentError):
    """CRIU runs but is older than this kernel needs."""


class CriuRunError(AgentError):
    """CRIU could not be started at all (we could not talk to CRIU)."""


class CriuFailedError(AgentError):
    """CRIU ran and said no: its exit code, its log file and the last error lines."""

    def __init__(self, action: str, returncode: int, log_path: str, last_lines: list[str]) -> None:
        self.action = action
        self.returncode = returncode
        self.log_path = log_path
        self.last_lines = last_lines
        detail = " | ".join(last_lines) if last_lines else "no error lines in the log"
        super().__init__(f"criu {action} failed with exit code {returncode} ({log_path}): {detail}")


class EnvironmentProblem(AgentError):
    """The container cannot be checkpointed: missing capability, seccomp filter."""


class StoreError(AgentError):
    """The checkpoint store cannot be used."""


class StoreMismatchError(StoreError):
    """The store belongs to another container, or has a layout this agent does not know."""


class StoreWriteError(StoreError):
    """Writing a generation failed (store not writable, full, I/O error)."""


class StoreLockTimeout(StoreError):
    """Another agent held the store's lock for too long."""


class GenerationInvalidError(StoreError):
    """A generation is incomplete, truncated, corrupted or of an unknown format."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"generation {name}: {reason}")


class FilesError(AgentError):
    """Saved files could not be saved or put back."""


class UnsupportedProcessError(AgentError):
    """The process tree holds something CRIU cannot checkpoint (io_uring, mixed users...)."""


class GpuError(AgentError):
    """The CUDA driver could not be used, or refused a step of a GPU checkpoint or restore:
    the driver call, its CUresult and the process are kept for the caller's decisions."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        call: str | None = None,
        pid: int | None = None,
    ) -> None:
        self.code = code
        self.call = call
        self.pid = pid
        super().__init__(message)


def store_write_error(store: Path, exc: OSError, what: str) -> StoreWriteError:
    """The OSError of a write to the store, said in the user's terms: full, not writable, or
    what failed (so the log line says what to fix on the volume)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreWriteError(f"checkpoint store {store} is full ({what}): {exc.strerror}")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StoreWriteError(f"checkpoint store {store} is not writable ({what}): {exc.strerror}")
    return StoreWriteError(f"checkpoint store {store}: {what} failed: {exc}")
