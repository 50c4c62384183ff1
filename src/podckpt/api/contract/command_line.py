"""The agent's command line: the webhook writes it (`RunCommand.container_command()`), the
agent parses it (`add_run_options()`, `run_command_from()`); and the user probe's command
(`podckpt.api.contract`, "Command line", "The user probe"). Writer and parser are one class
and one function side by side, so an option cannot be written one way and read another.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

from .environment import Env
from .mounts import AGENT_PATH, CONTROL_SOCKET, user_probe_file

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
