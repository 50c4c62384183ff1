"""Per-container settings: the `MMC_*` variables of a container's environment.

The product this re-implements reads three variables from a container's own environment
(comma-separated lists, like the annotations): `MMC_CHECKPOINT_FILES`,
`MMC_CHECKPOINT_ADVANCED_OPTIONS` and `MMC_RESTORE_ADVANCED_OPTIONS`. Each applies to its
container only and wins over the pod's key of the same meaning. The webhook reads them from
the container spec (literal values) and the agent from its own environment (every source,
ConfigMaps included), both through `for_container`, so they accept exactly the same values.

The variables are left in the application's environment: they are part of the container spec
the user wrote, and the application would see them without podckpt too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from . import criuopts, values
from .keys import Key, key_prefix
from .settings import CheckpointSettings, Source

CHECKPOINT_FILES_ENV = "MMC_CHECKPOINT_FILES"
CHECKPOINT_OPTIONS_ENV = "MMC_CHECKPOINT_ADVANCED_OPTIONS"
RESTORE_OPTIONS_ENV = "MMC_RESTORE_ADVANCED_OPTIONS"

#: Variable -> the pod key it overrides for its container.
CONTAINER_VARIABLES: dict[str, Key] = {
    CHECKPOINT_FILES_ENV: Key.CHECKPOINT_FILES,
    CHECKPOINT_OPTIONS_ENV: Key.CHECKPOINT_ADVANCED_OPTIONS,
    RESTORE_OPTIONS_ENV: Key.RESTORE_ADVANCED_OPTIONS,
}


def for_container(
    settings: CheckpointSettings,
    env: Mapping[str, str],
    *,
    prefix: str | None = None,
) -> CheckpointSettings:
    """`settings` with the container's `MMC_*` variables applied. Raises InvalidValueError
    naming the variable. A variable set to an empty value means an empty list: it still wins
    over the pod key (that is how one container opts out of a pod-wide option)."""
    prefix = key_prefix() if prefix is None else prefix
    fields: dict[str, object] = {}
    sources = dict(settings.sources)
    warnings = list(settings.warnings)
    for variable, key in CONTAINER_VARIABLES.items():
        if variable not in env:
            continue
        value = env[variable]
        if key is Key.CHECKPOINT_FILES:
            parsed = values.parse_paths(variable, value) if value.strip() else ()
            field, before = "files", settings.files
        elif key is Key.CHECKPOINT_ADVANCED_OPTIONS:
            parsed = criuopts.parse_options(variable, value)
            field, before = "checkpoint_options", settings.checkpoint_options
        else:
            parsed = criuopts.parse_options(variable, value)
            field, before = "restore_options", settings.restore_options
        fields[field] = parsed
        if key in sources and before != parsed:
            warnings.append(
                f"{prefix + key}: the {sources[key]} value is ignored for this container;"
                f" its {variable} wins"
            )
        sources[key] = Source.CONTAINER_ENV
    if not fields:
        return settings
    return dataclasses.replace(settings, **fields, sources=sources, warnings=tuple(warnings))  # type: ignore[arg-type]


def literal_env(container: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The `MMC_*` variables of a container spec with literal values, and the names of those
    whose value comes from elsewhere (`valueFrom`, or possibly `envFrom`): the webhook can
    only check the former; the agent checks all of them at start."""
    literal: dict[str, str] = {}
    indirect: list[str] = []
    for entry in container.get("env") or ():
        name = entry.get("name")
        if name not in CONTAINER_VARIABLES:
            continue
        if "valueFrom" in entry:
            indirect.append(name)
            literal.pop(name, None)
        else:
            literal[name] = str(entry.get("value") or "")
    if container.get("envFrom"):
        indirect += [v for v in CONTAINER_VARIABLES if v not in literal and v not in indirect]
    return literal, indirect
