"""CRIU options a workload may ask for, and how a list of them is written.

`checkpoint-advanced-options` and `restore-advanced-options` (pod keys) and the container
variables `MMC_CHECKPOINT_ADVANCED_OPTIONS` / `MMC_RESTORE_ADVANCED_OPTIONS` hand CRIU options
to the agent. Only options on `ALLOWED` are accepted: each changes how CRIU treats the
application's *own* resources (its connections, its unlinked files, its locks), never what
CRIU may reach outside the container (cgroups, mounts, other namespaces, scripts, the image
directory), and none undoes what the agent itself relies on (`--leave-stopped`,
`--restore-detached`, `--inherit-fd`, the image and log paths). Anything else is refused with
a message naming the option and the allowlist: at admission by the webhook, and again by the
agent at start (a variable from a ConfigMap is only visible there).

How a list is written:
- options separated by `,` or blanks; in a label by `.` (a label value holds neither `,` nor
  blanks nor `=`, and no CRIU option name or accepted value contains a dot);
- with or without the leading `--` (a label value cannot start with `-`);
- a value as `name=value` or `name value` (the CLI spelling), so `--ghost-limit 128M` and
  `ghost-limit=128M` are the same option. Options with a value therefore need an annotation
  or a variable.
"""

from __future__ import annotations

import dataclasses
import enum
import re

from .contract import TCP_CAPABILITIES
from .errors import InvalidValueError


class Phase(enum.Flag):
    DUMP = enum.auto()
    RESTORE = enum.auto()
    BOTH = DUMP | RESTORE


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    #: In which CRIU action the option means something.
    phase: Phase
    #: A regular expression the value must match; None: the option takes no value.
    value: str | None = None
    #: What the value looks like, for the error message.
    value_help: str = ""
    #: A capability the container needs for it (beyond the agent's required set).
    capability: str | None = None
    #: Given for the dump, it must be given to the restore of that image too (the agent
    #: adds it there itself).
    mirrored: bool = False


_SIZE = r"[0-9]+[KMG]?"

#: The CRIU options a workload may ask for (CRIU 4.2 spellings, without `--`).
ALLOWED: dict[str, OptionSpec] = {
    # Keep established TCP connections (repair mode + network lock): only where the pod's IP
    # comes back (loopback peers, fixed pod IPs); the agent falls back to closing them.
    "tcp-established": OptionSpec(Phase.BOTH, capability=TCP_CAPABILITIES[0], mirrored=True),
    # Connections come back closed: the agent's default.
    "tcp-close": OptionSpec(Phase.BOTH),
    # Dump connections still being established (SYN_RECV) by dropping them.
    "skip-in-flight": OptionSpec(Phase.DUMP),
    # An open file unlinked while it still has other hard links is kept through a temporary
    # hard link, made with linkat(AT_EMPTY_PATH), which needs CAP_DAC_READ_SEARCH (measured:
    # `Can't create link remap` / `trim failed` without it).
    "link-remap": OptionSpec(Phase.DUMP, capability="CAP_DAC_READ_SEARCH"),
    # Deleted-but-open files up to this size travel in the image (agent default 64M).
    "ghost-limit": OptionSpec(Phase.DUMP, _SIZE, "a size such as 64M or 1G"),
    # Ghost files stored sparse (holes kept as holes).
    "ghost-fiemap": OptionSpec(Phase.DUMP),
    # flock/POSIX/OFD locks: the agent's default.
    "file-locks": OptionSpec(Phase.BOTH, mirrored=True),
    # A unix socket whose peer is outside the application (the agent's socket, a sidecar's).
    "ext-unix-sk": OptionSpec(Phase.BOTH, mirrored=True),
    # The application's session/terminal comes from outside it (`tty: true`, `kubectl run -it`).
    "shell-job": OptionSpec(Phase.BOTH, mirrored=True),
    # Device files other than the usual character devices are dumped by path.
    "evasive-devices": OptionSpec(Phase.DUMP),
    # How a restored file is checked against the dumped one.
    "file-validation": OptionSpec(Phase.BOTH, r"filesize|buildid", "filesize or buildid"),
    # Restore files even if the restored task could not open them itself (permissions).
    "skip-file-rwx-check": OptionSpec(Phase.RESTORE),
    # Sysctls of the application's own namespaces that cannot be set are skipped.
    "weak-sysctls": OptionSpec(Phase.RESTORE),
}

#: Options the agent sets itself: asking for them again changes nothing.
_CONFLICTS = {"tcp-established": "tcp-close", "tcp-close": "tcp-established"}
_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


def allowed_text() -> str:
    """The allowlist as a user reads it in an error message."""
    parts = []
    for name, spec in ALLOWED.items():
        parts.append(f"{name}={spec.value_help}" if spec.value else name)
    return "CRIU options from: " + ", ".join(parts)


def parse_options(key: str, value: str, *, label: bool = False) -> tuple[str, ...]:
    """Canonical options (`tcp-established`, `ghost-limit=128M`) of a key or variable.

    Raises InvalidValueError naming the first refused option and the allowlist. An empty
    value is an empty list (a variable set to "" means "none")."""
    separators = r"[.]" if label else r"[,\s]"
    tokens = [t for t in re.split(separators, value) if t.strip()]
    result: dict[str, str] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index].strip()
        index += 1
        name, eq, arg = token.removeprefix("--").partition("=")
        spec = ALLOWED.get(name)
        if spec is None or not _NAME.match(name):
            raise InvalidValueError(key, value, _refusal(token))
        if spec.value is None:
            if eq:
                raise InvalidValueError(key, value, f"{name} takes no value; " + allowed_text())
            option = name
        else:
            if not eq:
                if index >= len(tokens) or tokens[index].strip().startswith("-"):
                    raise InvalidValueError(
                        key, value, f"{name} needs a value ({spec.value_help}); " + allowed_text()
                    )
                arg = tokens[index].strip()
                index += 1
            if not re.fullmatch(spec.value, arg):
                raise InvalidValueError(key, value, f"{name}={spec.value_help}; " + allowed_text())
            option = f"{name}={arg}"
        result[name] = option
    for name, other in _CONFLICTS.items():
        if name in result and other in result:
            raise InvalidValueError(key, value, f"either {name} or {other}, not both")
    return tuple(result.values())


def _refusal(token: str) -> str:
    name = token.removeprefix("--").partition("=")[0]
    return f"{name!r} is not an allowed CRIU option here; " + allowed_text()


def option_name(option: str) -> str:
    return option.partition("=")[0]


def for_phase(options: tuple[str, ...], phase: Phase) -> tuple[str, ...]:
    """The options that mean something for `phase` (a restore-only option is not given to
    the dump, and the other way round: CRIU would refuse nothing, but it is noise)."""
    return tuple(o for o in options if ALLOWED[option_name(o)].phase & phase)


def mirrored(dump_options: tuple[str, ...]) -> tuple[str, ...]:
    """Dump options that the restore of that image needs as well."""
    return tuple(o for o in dump_options if ALLOWED[option_name(o)].mirrored)


def capabilities_for(options: tuple[str, ...]) -> tuple[str, ...]:
    """Capabilities (`CAP_NET_ADMIN`) the container needs for these options."""
    caps = [ALLOWED[option_name(o)].capability for o in options]
    return tuple(dict.fromkeys(c for c in caps if c))


def has(options: tuple[str, ...], name: str) -> bool:
    return any(option_name(o) == name for o in options)
