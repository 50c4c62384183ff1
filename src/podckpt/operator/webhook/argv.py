"""A container's argv by Kubernetes rules, and where it must come from.

`command` replaces the image ENTRYPOINT and `args` replaces its CMD; an empty list counts as
absent. So the image config is needed exactly when `command` is empty:

| command | args | argv                      |
|---------|------|---------------------------|
| set     | set  | command + args            |
| set     | -    | command (CMD is dropped)  |
| -       | set  | ENTRYPOINT + args         |
| -       | -    | ENTRYPOINT + CMD          |

The wrapped container's `args` hold the original argv. The kubelet expands `$(VAR)` in
`command` and `args`, but never in the image's ENTRYPOINT/CMD, so argv taken from the image is
escaped (`$` -> `$$`) to reach the application byte for byte.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class ImageArgv:
    """ENTRYPOINT, CMD and USER of an image config, and the manifest digest they were read
    from."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    digest: str = ""
    #: `USER` as the image config writes it: "", a name or uid, optionally `:group`.
    user: str = ""


class EmptyArgvError(ValueError):
    """Neither the container nor its image says what to run."""


def needs_image(container: Mapping[str, Any]) -> bool:
    return not container.get("command")


def escape_expansion(word: str) -> str:
    """Protect a word from the kubelet's `$(VAR)` expansion."""
    return word.replace("$", "$$")


def original_argv(container: Mapping[str, Any], image: ImageArgv | None) -> list[str]:
    """The argv the container would run, in the form that goes into the wrapped `args`."""
    command: Sequence[str] = container.get("command") or ()
    args: Sequence[str] = container.get("args") or ()
    if command:
        argv = [*command, *args]
    else:
        if image is None:
            raise ValueError("the image config is needed when the container has no command")
        from_image = [escape_expansion(word) for word in image.entrypoint]
        if args:
            argv = [*from_image, *args]
        else:
            argv = [*from_image, *(escape_expansion(word) for word in image.cmd)]
    if not argv:
        raise EmptyArgvError(
            f"container {container.get('name')!r}: neither the pod spec (command/args) nor the"
            " image (ENTRYPOINT/CMD) says what to run"
        )
    return argv
