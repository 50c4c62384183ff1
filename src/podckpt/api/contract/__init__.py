"""The webhook <-> agent contract, in one place: import it as `podckpt.api.contract`.

The webhook rewrites a checkpointed container (mounts, environment, capabilities, command) and
the agent, as that container's PID 1, reads what the webhook put there. Both sides import the
names below and nothing else spells them: a variable injected but never read, or read but never
injected, shows up here as a name with one user.

This package is that one place. Its modules are the chapters of the contract, each small
enough to read at once; the package re-exports every name, and the rest of podckpt imports the
package, never a chapter (an import-linter contract in pyproject.toml), so that a search for
`contract.` finds every use of the interface.

What crosses the boundary, and why each item exists:

- **Mounts** (`mounts`; fixed paths, because the bundle's launcher and the agent's defaults
  are built for them): the bundle (read-only emptyDir filled by the init container), the pod's
  labels and annotations (downward API, re-read at SIGTERM so that live label changes count),
  the checkpoint store (the identity's PVC, or the user's `checkpoint-storage-volume`), the
  agent's private run directory (its control socket; a per-container subPath of an emptyDir
  that no other container sees) and, read-only, the user probe's answers. The namespace's
  store key is not a mount of the checkpointed container: the bundle init container copies it
  into the bundle (`STORE_KEY_FILE`).
- **Command line** (`command_line`, `RunCommand`): where the store is, the container's name,
  the downward-API files, the workload revision the pod belongs to, the namespace's keys
  (defaults below the pod's own, resolved at admission: the agent cannot read the Namespace),
  the application's user (numeric, or where the user probe wrote it), whether it must not be
  root, which capabilities it must not hold, then `--` and the application's original argv.
  The webhook builds it with `RunCommand.container_command()`; the agent parses it with
  `add_run_options()`.
- **The user probe** (`command_line`, `whoami_command`): an init container with the
  application's image and securityContext (minus capabilities) that writes what the runtime
  made of them (uid, gid, groups, HOME) for the agent: the image's `USER` resolved exactly as
  the runtime does.
- **Environment** (`environment`, `Env`): only what cannot be an option: the pod name for the
  kubelet's `$(VAR)` expansion in the store path of a plain pod whose name is generated, and
  values the agent reads at start (image, application user). Every name in `Env` is the
  agent's, never the application's: the agent removes all of them from the environment it
  starts the application with (`AGENT_ENV`).
- **Capabilities** (`capabilities`): what CRIU needs, measured (docs/agent.md "Capabilities").
- **Exit codes** (`exitcodes`, `ExitCode`): what the agent's exit tells the kubelet, Jobs and
  the controller (which turns a checkpointed container's termination into an Event, and Jobs'
  `podFailurePolicy` can match them).

Standard library only: the agent imports this inside arbitrary container images.
"""

from .capabilities import (
    CAPABILITY_REASONS,
    ISOLATION_CAPABILITIES,
    REQUIRED_CAPABILITIES,
    RUNTIME_DEFAULT_CAPABILITIES,
    TCP_CAPABILITIES,
    USER_DUMP_CAPABILITIES,
    kubernetes_capability,
)
from .command_line import (
    ANNOTATIONS_OPTION,
    CONTAINER_OPTION,
    CONTROL_SOCKET_OPTION,
    DROP_CAPABILITIES_OPTION,
    GROUPS_OPTION,
    LABELS_OPTION,
    NAMESPACE_DEFAULTS_OPTION,
    NON_ROOT_OPTION,
    REVISION_OPTION,
    STORE_OPTION,
    STRICT_GROUPS_OPTION,
    USER_OPTION,
    USER_PROBE_OPTION,
    WHOAMI_COMMAND,
    WHOAMI_OUT_OPTION,
    RunCommand,
    add_run_options,
    namespace_defaults_text,
    parse_namespace_defaults,
    parse_run_args,
    run_command_from,
    whoami_command,
)
from .environment import (
    AGENT_ENV,
    Env,
    application_environment,
)
from .exitcodes import (
    ExitCode,
)
from .mounts import (
    AGENT_PATH,
    ANNOTATIONS_FILE,
    BUNDLE_MOUNT,
    CONTROL_SOCKET,
    LABELS_FILE,
    META_MOUNT,
    RUN_MOUNT,
    STORE_KEY_FILE,
    STORE_KEY_IN_BUNDLE,
    STORE_KEY_SECRET_KEY,
    STORE_MOUNT,
    USER_MOUNT,
    user_probe_file,
)

__all__ = [
    "AGENT_ENV",
    "AGENT_PATH",
    "ANNOTATIONS_FILE",
    "ANNOTATIONS_OPTION",
    "BUNDLE_MOUNT",
    "CAPABILITY_REASONS",
    "CONTAINER_OPTION",
    "CONTROL_SOCKET",
    "CONTROL_SOCKET_OPTION",
    "DROP_CAPABILITIES_OPTION",
    "GROUPS_OPTION",
    "ISOLATION_CAPABILITIES",
    "LABELS_FILE",
    "LABELS_OPTION",
    "META_MOUNT",
    "NAMESPACE_DEFAULTS_OPTION",
    "NON_ROOT_OPTION",
    "REQUIRED_CAPABILITIES",
    "REVISION_OPTION",
    "RUNTIME_DEFAULT_CAPABILITIES",
    "RUN_MOUNT",
    "STORE_KEY_FILE",
    "STORE_KEY_IN_BUNDLE",
    "STORE_KEY_SECRET_KEY",
    "STORE_MOUNT",
    "STORE_OPTION",
    "STRICT_GROUPS_OPTION",
    "TCP_CAPABILITIES",
    "USER_DUMP_CAPABILITIES",
    "USER_MOUNT",
    "USER_OPTION",
    "USER_PROBE_OPTION",
    "WHOAMI_COMMAND",
    "WHOAMI_OUT_OPTION",
    "Env",
    "ExitCode",
    "RunCommand",
    "add_run_options",
    "application_environment",
    "kubernetes_capability",
    "namespace_defaults_text",
    "parse_namespace_defaults",
    "parse_run_args",
    "run_command_from",
    "user_probe_file",
    "whoami_command",
]
