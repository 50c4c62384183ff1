"""Which Linux capabilities the agent needs, and a start-time check that names what is missing.

The agent runs CRIU itself, inside the container, so the container needs what CRIU needs. The
set below was measured in the test sandbox (docs/agent.md, "Capabilities"): CRIU's
`--unprivileged` mode needs CAP_CHECKPOINT_RESTORE (restore PIDs with clone3 `set_tid`, read
/proc/PID/map_files) and CAP_SETPCAP (restore the tasks' capability sets: without it the
restored task dies in rt_sigreturn); that was enough for dump and restore of TCP listeners and
connections with `--tcp-close`. CAP_SYS_PTRACE is only needed when the application holds
capabilities the agent lacks (it never does when the agent starts it). With CAP_SYS_ADMIN and
the others of PRIVILEGED_CRIU_CAPABILITIES, the agent runs CRIU in its privileged mode.
The webhook adds exactly these to checkpointed containers; the bundle engineer may narrow them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from podckpt.api import contract

from .errors import EnvironmentProblem

#: Linux capability numbers (linux/capability.h).
CAP_NUMBERS: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

#: What the webhook adds and the agent checks: one list, in the webhook<->agent contract.
REQUIRED_CAPABILITIES = contract.REQUIRED_CAPABILITIES
USER_DUMP_CAPABILITIES = contract.USER_DUMP_CAPABILITIES

#: With all of these CRIU runs in its privileged mode (no `--unprivileged`), which also
#: suspends seccomp filters and restores time namespaces.
PRIVILEGED_CRIU_CAPABILITIES: tuple[str, ...] = (
    "CAP_SYS_ADMIN",
    "CAP_NET_ADMIN",
    "CAP_SYS_TIME",
    "CAP_SYS_CHROOT",
    "CAP_SETPCAP",
)


def effective_capabilities(status_path: str | Path = "/proc/self/status") -> int:
    """The CapEff bit mask of this process."""
    for line in Path(status_path).read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise EnvironmentProblem(f"{status_path} has no CapEff line")


def missing(required: Iterable[str], mask: int) -> list[str]:
    return [name for name in required if not mask >> CAP_NUMBERS[name] & 1]


def numbers(names: Iterable[str]) -> tuple[int, ...]:
    """Capability numbers of `names` (`CAP_X` or Kubernetes' `X`); EnvironmentProblem for an
    unknown name."""
    out = []
    for name in names:
        full = name if name.startswith("CAP_") else "CAP_" + name
        if full not in CAP_NUMBERS:
            raise EnvironmentProblem(f"unknown capability {name!r}")
        out.append(CAP_NUMBERS[full])
    return tuple(out)


def check_required(mask: int | None = None) -> None:
    """Raise naming each missing capability, before anything is started."""
    mask = effective_capabilities() if mask is None else mask
    absent = missing(REQUIRED_CAPABILITIES, mask)
    if absent:
        raise EnvironmentProblem(
            "missing capabilit"
            + ("y " if len(absent) == 1 else "ies ")
            + ", ".join(absent)
            + ": CRIU cannot checkpoint or restore this container; add them to the container's"
            " securityContext.capabilities (the podckpt webhook does this for opted-in pods)"
        )


def criu_privileged(mask: int | None = None) -> bool:
    mask = effective_capabilities() if mask is None else mask
    return not missing(PRIVILEGED_CRIU_CAPABILITIES, mask)


def seccomp_mode(status_path: str | Path = "/proc/self/status") -> int:
    """0 when no seccomp filter applies to this process (Seccomp: line of /proc/PID/status)."""
    for line in Path(status_path).read_text().splitlines():
        if line.startswith("Seccomp:"):
            return int(line.split()[1])
    return 0


def check_seccomp(status_path: str | Path = "/proc/self/status") -> None:
    mode = seccomp_mode(status_path)
    if mode != 0:
        raise EnvironmentProblem(
            f"the agent runs under a seccomp filter (Seccomp: {mode}); CRIU cannot dump a"
            " process under seccomp from inside the container: set the container's"
            " securityContext.seccompProfile.type to Unconfined"
        )
