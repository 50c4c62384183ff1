"""The webhook <-> agent contract, in one place.

The webhook rewrites a checkpointed container (mounts, environment, capabilities, command) and
the agent, as that container's PID 1, reads what the webhook put there. Both sides import the
names below and nothing else spells them: a variable injected but never read, or read but never
injected, shows up here as a name with one user.

What crosses the boundary, and why each item exists:

- **Mounts** (fixed paths, because the bundle's launcher and the agent's defaults are built
  for them): the bundle (read-only emptyDir filled by the init container), the pod's labels
  and annotations (downward API, re-read at SIGTERM so that live label changes count), the
  checkpoint store (the identity's PVC, or the user's `checkpoint-storage-volume`), the
  agent's private run directory (its control socket; a per-container subPath of an emptyDir
  that no other container sees) and, read-only, the user probe's answers. The namespace's
  store key is not a mount of the checkpointed container: the bundle init container copies it
  into the bundle (`STORE_KEY_FILE`).
- **Command line** (`RunCommand`): where the store is, the container's name, the downward-API
  files, the workload revision the pod belongs to, the namespace's keys (defaults below the
  pod's own, resolved at admission: the agent cannot read the Namespace), the application's
  user (numeric, or where the user probe wrote it), whether it must not be root, which
  capabilities it must not hold, then `--` and the application's original argv. The webhook
  builds it with `RunCommand.container_command()`; the agent parses it with
  `add_run_options()`.
- **The user probe** (`whoami_command`): an init container with the application's image and
  securityContext (minus capabilities) that writes what the runtime made of them (uid, gid,
  groups, HOME) for the agent: the image's `USER` resolved exactly as the runtime does.
- **Environment** (`Env`): only what cannot be an option: the pod name for the kubelet's
  `$(VAR)` expansion in the store path of a plain pod whose name is generated, and values the
  agent reads at start (image, application user). Every name in `Env` is the agent's, never
  the application's: the agent removes all of them from the environment it starts the
  application with (`AGENT_ENV`).
- **Capabilities**: what CRIU needs, measured (docs/agent.md "Capabilities").
- **Exit codes** (`ExitCode`): what the agent's exit tells the kubelet, Jobs and the
  controller (which turns a checkpointed container's termination into an Event, and Jobs'
  `podFailurePolicy` can match them).

Standard library only: the agent imports this inside arbitrary container images.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
from collections.abc import Mapping, Sequence

from .keys import PREFIX_ENV

# ---- mounts ----------------------------------------------------------------------------------

#: Where checkpointed containers mount the bundle (the emptyDir the init container fills).
BUNDLE_MOUNT = "/.podckpt"
#: The agent's launcher inside the bundle: the container's new command.
AGENT_PATH = f"{BUNDLE_MOUNT}/bin/podckpt-agent"
#: The pod's labels and annotations as downward-API files.
META_MOUNT = "/.podckpt-meta"
LABELS_FILE = f"{META_MOUNT}/labels"
ANNOTATIONS_FILE = f"{META_MOUNT}/annotations"
#: The checkpoint volume; a container's store is `<STORE_MOUNT>/<identity>/<container>`.
STORE_MOUNT = "/.podckpt-store"
#: The store key inside the bundle's emptyDir: the init container copies it there from the
#: namespace's key Secret (mounted in the init container only), into a 0700 directory as a
#: 0400 file owned by root, so that a non-root application cannot read it even when the
#: pod's fsGroup would make a Secret volume group-readable (docs/security.md).
STORE_KEY_IN_BUNDLE = ".store-key/key"
STORE_KEY_FILE = f"{BUNDLE_MOUNT}/{STORE_KEY_IN_BUNDLE}"
#: The data key of the namespace's store key Secret.
STORE_KEY_SECRET_KEY = "key"  # noqa: S105 - a Secret data key name
#: The agent's own directory (its control socket), seen by its container only.
RUN_MOUNT = "/.podckpt-run"
CONTROL_SOCKET = f"{RUN_MOUNT}/control.sock"
#: The user probes' answers, one file per checkpointed container (read-only for them).
USER_MOUNT = "/.podckpt-user"


def user_probe_file(container: str) -> str:
    return f"{USER_MOUNT}/{container}"


# ---- environment -------------------------------------------------------------------------------


class Env(enum.StrEnum):
    """Variables of the agent (set by the webhook, the bundle's launcher or a developer)."""

    #: Set by the bundle's launcher: the bundle's directory (CRIU, helpers).
    BUNDLE = "PODCKPT_BUNDLE"
    #: A CRIU binary to use instead of the bundle's (tests, development).
    CRIU = "PODCKPT_CRIU"
    #: Defaults of `--store` and `--container` when the agent is run by hand.
    STORE = "PODCKPT_STORE"
    CONTAINER = "PODCKPT_CONTAINER"
    #: Webhook, plain pods with a generated name only: `metadata.name`, which the kubelet
    #: expands in `--store .../pod-$(PODCKPT_POD_NAME)/...`.
    POD_NAME = "PODCKPT_POD_NAME"
    #: Webhook: the container's image reference; a checkpoint is restored only into the same.
    IMAGE = "PODCKPT_IMAGE"
    #: Webhook (downward API, `metadata.uid`; unknown at admission): the pod's uid. A
    #: checkpoint is never restored into the pod that made it: a container restarted inside
    #: its pod (liveness probe, OOM kill, crash) starts fresh.
    POD_UID = "PODCKPT_POD_UID"
    #: The key prefix when it is not `memverge.ai/` (read by `podckpt.api.keys`).
    KEY_PREFIX = PREFIX_ENV
    #: Where the last phase lines go for the kubelet (tests point it elsewhere).
    TERMINATION_LOG = "PODCKPT_TERMINATION_LOG"
    #: Webhook: the file holding the namespace's store key (`STORE_KEY_FILE`): manifests are
    #: signed and verified with it (HMAC-SHA256, docs/security.md). Unset: no HMAC.
    STORE_KEY = "PODCKPT_STORE_KEY"
    #: Webhook (operator setting): "true" restores podckpt 0.1.0 checkpoints, which carry no
    #: HMAC, although a store key is set: for the upgrade from 0.1.0 only (docs/upgrade.md).
    STORE_ACCEPT_UNSIGNED = "PODCKPT_STORE_ACCEPT_UNSIGNED"
    #: Seconds the CUDA driver's lock may wait for CUDA calls in flight (default 10).
    GPU_LOCK_TIMEOUT = "PODCKPT_GPU_LOCK_TIMEOUT_S"
    #: Webhook: the pod's `terminationGracePeriodSeconds` (as the webhook set it). At SIGTERM
    #: the agent does not start a dump that cannot finish before the kubelet's SIGKILL; it
    #: forwards SIGTERM at once instead (docs/agent.md "The deadline").
    GRACE_PERIOD = "PODCKPT_GRACE_PERIOD_SECONDS"
    #: Webhook: `private` when the application gets an IPC namespace of its own (the pod's
    #: `checkpoint-ipc-namespace`, its namespace default, or `auto` resolved by the webhook,
    #: which alone sees whether the container is alone in its pod); `pod` otherwise.
    IPC_NAMESPACE = "PODCKPT_IPC_NAMESPACE"
    #: Webhook: `deny` when io_uring_setup must fail for the application (`checkpoint-io-uring`).
    IO_URING = "PODCKPT_IO_URING"
    #: Default of `--control-socket` (tests, development).
    CONTROL_SOCKET = "PODCKPT_CONTROL_SOCKET"


#: Removed from the application's environment: none of ours reaches the application.
AGENT_ENV: frozenset[str] = frozenset(Env)


def application_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without the agent's variables."""
    return {k: v for k, v in environ.items() if k not in AGENT_ENV}


# ---- capabilities --------------------------------------------------------------------------------

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


# ---- exit codes ----------------------------------------------------------------------------------


class ExitCode(enum.IntEnum):
    """The agent's own exit codes; otherwise it exits with the application's code, or 128+N
    when signal N killed the application, so that the kubelet, Jobs and `restartPolicy` see
    the application as if the agent were not there.

    They lie outside 0-2 (conventional results), 126-127 (shell "cannot execute") and 128-192
    (128+signal), so they never look like an application's own result or death by a signal;
    none is 0, so no Job counts a checkpointed or failed pod as completed.
    """

    #: The agent itself failed: bad command line, bad keys, unusable store, missing or too old
    #: CRIU, missing capabilities, a seccomp filter on the agent, the application not
    #: executable.
    AGENT_FAILURE = 200
    #: `restore-policy: strict` and no generation could be restored.
    RESTORE_FAILURE = 201
    #: SIGTERM: the checkpoint was committed and the application stopped (it will be restored
    #: by the pod that replaces this one). Never 0: a Job counts a pod that exits 0 as a
    #: completion, and a deleted Job pod that was checkpointed has not completed.
    CHECKPOINTED = 202
    #: SIGTERM: the checkpoint was refused or failed, so the application got the SIGTERM and
    #: stopped; the previous checkpoint (if any) is still the one a new pod restores. The
    #: application's own exit code is in the termination message (`exit` line, `app_code`).
    CHECKPOINT_FAILED = 203

    @property
    def meaning(self) -> str:
        return _EXIT_MEANINGS[self]


#: One line each, for `podckpt-agent --help` and the controller's Events.
_EXIT_MEANINGS = {
    ExitCode.AGENT_FAILURE: "agent failure (arguments, keys, store, CRIU, capabilities)",
    ExitCode.RESTORE_FAILURE: "restore-policy strict: no checkpoint could be restored",
    ExitCode.CHECKPOINTED: "SIGTERM: checkpoint committed, application stopped",
    ExitCode.CHECKPOINT_FAILED: "SIGTERM: no checkpoint (refused or failed), application stopped",
}


# ---- the agent's command line ----------------------------------------------------------------

STORE_OPTION = "--store"
CONTAINER_OPTION = "--container"
LABELS_OPTION = "--labels-file"
ANNOTATIONS_OPTION = "--annotations-file"
REVISION_OPTION = "--revision"
NAMESPACE_DEFAULTS_OPTION = "--namespace-defaults"


def namespace_defaults_text(labels: Mapping[str, str], annotations: Mapping[str, str]) -> str:
    """The namespace's keys as the webhook hands them to the agent: compact JSON, labels and
    annotations apart (they parse differently: a list is `.`-separated in a label)."""
    body = {
        "labels": dict(sorted(labels.items())),
        "annotations": dict(sorted(annotations.items())),
    }
    return json.dumps(body, separators=(",", ":"))


def parse_namespace_defaults(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) of `namespace_defaults_text`. Raises ValueError naming the
    option."""
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{NAMESPACE_DEFAULTS_OPTION}: not JSON ({exc})") from None
    layers: list[dict[str, str]] = []
    for part in ("labels", "annotations"):
        layer = body.get(part, {}) if isinstance(body, dict) else None
        if not isinstance(layer, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in layer.items()
        ):
            raise ValueError(f"{NAMESPACE_DEFAULTS_OPTION}: {part!r} must map key names to strings")
        layers.append(layer)
    return layers[0], layers[1]


USER_OPTION = "--user"
USER_PROBE_OPTION = "--user-probe"
GROUPS_OPTION = "--supplementary-groups"
STRICT_GROUPS_OPTION = "--strict-groups"
NON_ROOT_OPTION = "--non-root"
DROP_CAPABILITIES_OPTION = "--drop-capabilities"
CONTROL_SOCKET_OPTION = "--control-socket"


@dataclasses.dataclass(frozen=True)
class RunCommand:
    """`podckpt-agent run [options] -- ARGV`, as the webhook writes it and the agent reads it.

    The application's user: `user` (`UID[:GID]`, the container's `runAsUser`/`runAsGroup`;
    the gid defaults to the uid's group in the container's /etc/passwd, else 0, as the
    runtime does), plus `groups` (the pod's `supplementalGroups` and `fsGroup`) and, unless
    `strict_groups`, the user's groups in the container's /etc/group; or `user_probe`, the
    file where the user probe wrote what the runtime made of the image's `USER`. Neither:
    the application runs as the agent (root). `non_root`: the application must never run as
    uid 0 (`runAsNonRoot`). `drop_capabilities`: taken from the application's capability sets,
    bounding set included (what the webhook added for the agent only)."""

    argv: tuple[str, ...]
    store: str | None = None
    container: str | None = None
    labels_file: str | None = None
    annotations_file: str | None = None
    #: The workload revision the pod was created for (`podckpt.operator.domain.revision`):
    #: a checkpoint of another revision is not restored.
    revision: str | None = None
    #: The namespace's keys at the pod's admission (`namespace_defaults_text`).
    namespace_defaults: str | None = None
    user: str | None = None
    user_probe: str | None = None
    groups: tuple[int, ...] = ()
    strict_groups: bool = False
    non_root: bool = False
    drop_capabilities: tuple[str, ...] = ()
    control_socket: str | None = None

    def options(self) -> list[str]:
        out: list[str] = []
        for option, value in (
            (STORE_OPTION, self.store),
            (CONTAINER_OPTION, self.container),
            (LABELS_OPTION, self.labels_file),
            (ANNOTATIONS_OPTION, self.annotations_file),
            (REVISION_OPTION, self.revision),
            (NAMESPACE_DEFAULTS_OPTION, self.namespace_defaults),
            (USER_OPTION, self.user),
            (USER_PROBE_OPTION, self.user_probe),
            (GROUPS_OPTION, ",".join(map(str, self.groups)) or None),
            (DROP_CAPABILITIES_OPTION, ",".join(self.drop_capabilities) or None),
            (CONTROL_SOCKET_OPTION, self.control_socket),
        ):
            if value is not None:
                out += [option, value]
        if self.strict_groups:
            out.append(STRICT_GROUPS_OPTION)
        if self.non_root:
            out.append(NON_ROOT_OPTION)
        return out

    def container_command(self, agent: str = AGENT_PATH) -> tuple[list[str], list[str]]:
        """(`command`, `args`) of the container: the agent and its options in `command`, the
        application's argv in `args`, so that `kubectl describe` still shows the latter."""
        return [agent, "run", *self.options(), "--"], list(self.argv)

    def agent_args(self) -> list[str]:
        """The agent's own argv (after the program name)."""
        return ["run", *self.options(), "--", *self.argv]


def add_run_options(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """The options of `podckpt-agent run`, with their defaults from `environ`."""
    parser.add_argument(
        STORE_OPTION,
        dest="store",
        default=environ.get(Env.STORE),
        help=f"this container's checkpoint store directory (default ${Env.STORE};"
        " without one the agent only supervises)",
    )
    parser.add_argument(
        CONTAINER_OPTION,
        dest="container",
        default=environ.get(Env.CONTAINER),
        help="container name recorded in and checked against the store"
        f" (default ${Env.CONTAINER}, else the store directory's name)",
    )
    parser.add_argument(
        LABELS_OPTION,
        dest="labels_file",
        help="downward-API file of the pod's labels, re-read at SIGTERM"
        " (without it checkpointing is on)",
    )
    parser.add_argument(
        ANNOTATIONS_OPTION,
        dest="annotations_file",
        help="downward-API file of the pod's annotations",
    )
    parser.add_argument(
        REVISION_OPTION,
        dest="revision",
        help="the workload revision of this pod (e.g. pod-template-hash=5d4f8c, or"
        " spec=sha256:... of the container); a checkpoint of another revision is not restored",
    )
    parser.add_argument(
        NAMESPACE_DEFAULTS_OPTION,
        dest="namespace_defaults",
        metavar="JSON",
        help='the namespace\'s keys, {"labels": {...}, "annotations": {...}}: defaults below'
        " the pod's own labels and annotations",
    )
    user = parser.add_mutually_exclusive_group()
    user.add_argument(
        USER_OPTION,
        dest="user",
        metavar="UID[:GID]",
        help="run the application as this user (default: as the agent)",
    )
    user.add_argument(
        USER_PROBE_OPTION,
        dest="user_probe",
        metavar="FILE",
        help="run the application as the user the podckpt user probe wrote into FILE",
    )
    parser.add_argument(
        GROUPS_OPTION,
        dest="groups",
        default="",
        metavar="GID,...",
        help="supplementary groups of the application (with --user)",
    )
    parser.add_argument(
        STRICT_GROUPS_OPTION,
        dest="strict_groups",
        action="store_true",
        help="no groups from the container's /etc/group (supplementalGroupsPolicy: Strict)",
    )
    parser.add_argument(
        NON_ROOT_OPTION,
        dest="non_root",
        action="store_true",
        help="never run (or restore) the application as root (runAsNonRoot)",
    )
    parser.add_argument(
        DROP_CAPABILITIES_OPTION,
        dest="drop_capabilities",
        default="",
        metavar="CAP,...",
        help="capabilities the application must not hold (the agent keeps them)",
    )
    parser.add_argument(
        CONTROL_SOCKET_OPTION,
        dest="control_socket",
        default=environ.get(Env.CONTROL_SOCKET),
        metavar="PATH",
        help=f"the control socket (default ${Env.CONTROL_SOCKET}, else {CONTROL_SOCKET})",
    )
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- the application's command")


def _id_list(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{option}: not a list of numeric ids: {text!r}") from None


def run_command_from(namespace: argparse.Namespace) -> RunCommand:
    """The parsed options as a `RunCommand` (the argv without its leading `--`)."""
    argv: Sequence[str] = namespace.argv
    if argv and argv[0] == "--":
        argv = argv[1:]
    return RunCommand(
        argv=tuple(argv),
        store=namespace.store,
        container=namespace.container,
        labels_file=namespace.labels_file,
        annotations_file=namespace.annotations_file,
        revision=namespace.revision,
        namespace_defaults=namespace.namespace_defaults,
        user=namespace.user,
        user_probe=namespace.user_probe,
        groups=_id_list(namespace.groups, GROUPS_OPTION),
        strict_groups=namespace.strict_groups,
        non_root=namespace.non_root,
        drop_capabilities=tuple(c for c in namespace.drop_capabilities.split(",") if c),
        control_socket=namespace.control_socket,
    )


# ---- the user probe ----------------------------------------------------------------------------

WHOAMI_COMMAND = "whoami"
WHOAMI_OUT_OPTION = "--out"


def whoami_command(container: str, agent: str = AGENT_PATH) -> list[str]:
    """The user probe's command: write this process's credentials for `container`'s agent."""
    return [agent, WHOAMI_COMMAND, WHOAMI_OUT_OPTION, user_probe_file(container)]


def parse_run_args(args: Sequence[str], environ: Mapping[str, str] | None = None) -> RunCommand:
    """Parse `run`'s arguments (after `run`) the way the agent does; for the webhook's tests
    and tools (the agent itself builds its parser with `add_run_options`)."""
    parser = argparse.ArgumentParser(prog="podckpt-agent run", exit_on_error=False)
    add_run_options(parser, os.environ if environ is None else environ)
    return run_command_from(parser.parse_args(list(args)))
