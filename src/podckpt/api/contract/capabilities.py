"""The capabilities the webhook gives a checkpointed container for CRIU, why each is there,
and which a container holds anyway (`podckpt.api.contract`, "Capabilities")."""

from __future__ import annotations

#: Needed for every dump and restore (`criu --unprivileged`): CHECKPOINT_RESTORE restores PIDs
#: with clone3 `set_tid` and reads /proc/PID/map_files; SETPCAP restores the tasks' capability
#: sets (without it the restored task dies in rt_sigreturn).
REQUIRED_CAPABILITIES: tuple[str, ...] = ("CAP_CHECKPOINT_RESTORE", "CAP_SETPCAP")

#: Also needed when the application runs as a non-root user: the agent switches to that user
#: for CRIU's dump (SETUID/SETGID) and reads back what CRIU wrote as that user (DAC_OVERRIDE).
USER_DUMP_CAPABILITIES: tuple[str, ...] = ("CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE")

#: CRIU needs it to dump and restore TCP sockets in repair mode (`--tcp-established`).
TCP_CAPABILITIES: tuple[str, ...] = ("CAP_NET_ADMIN",)

#: An IPC namespace of the application's own (unshare; CRIU recreates it) or its io_uring
#: seccomp filter (installed without no_new_privs; CRIU suspends it for the dump:
#: PTRACE_O_SUSPEND_SECCOMP): CAP_SYS_ADMIN, measured (docs/agent.md "Isolation").
ISOLATION_CAPABILITIES: tuple[str, ...] = ("CAP_SYS_ADMIN",)
#: Why each capability the webhook may add is there (the admission warning lists them).
CAPABILITY_REASONS: dict[str, str] = {
    "CAP_CHECKPOINT_RESTORE": "CRIU restores PIDs (clone3 set_tid) and reads /proc/PID/map_files",
    "CAP_SETPCAP": "CRIU restores the tasks' capability sets",
    "CAP_SETUID": "the agent runs CRIU's dump as the application's user",
    "CAP_SETGID": "the agent runs CRIU's dump as the application's group",
    "CAP_DAC_OVERRIDE": "CRIU, as the application's user, writes into the agent's private store",
    "CAP_NET_ADMIN": "TCP repair mode for tcp-established",
    "CAP_DAC_READ_SEARCH": "linkat(AT_EMPTY_PATH) for link-remap",
    "CAP_SYS_ADMIN": "an IPC namespace of the application's own, or the io_uring filter",
}

#: Capabilities that both containerd and CRI-O give a container by default: a container
#: holds them without podckpt unless its securityContext drops them. The others the webhook
#: adds are taken away from the application again (`--drop-capabilities`), so the application
#: never holds a capability it would not have held without podckpt.
RUNTIME_DEFAULT_CAPABILITIES: frozenset[str] = frozenset(
    {
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_KILL",
    }
)


def kubernetes_capability(name: str) -> str:
    """Kubernetes spells capabilities without the `CAP_` prefix."""
    return name.removeprefix("CAP_")
