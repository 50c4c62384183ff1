"""The checkpoint store's layout on the checkpoint volume (ARCHITECTURE §5): the names of its
files and markers, and what a generation directory is.

    <store>/store.json                 layout version + container name (checked on every open)
    <store>/generations/<UTC>-<seq>/   images/, files/, files.json, dump.log, manifest.json
    <store>/LATEST                     name of the newest committed generation
    <store>/COMPLETED                  the application exited by itself: never restore
    <store>/.lock                      flock held around every dump and restore

Kept apart from store.py so that everything that reads or writes the store (the commit,
retention, verification, restore) names these once; why the store works as it does is said
in store.py.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from . import manifest as manifest_format

LAYOUT_VERSION = 1
MANIFEST_FORMAT = manifest_format.FORMAT
STORE_JSON = "store.json"
GENERATIONS = "generations"
LATEST = "LATEST"
COMPLETED = "COMPLETED"
LOCK = ".lock"
MANIFEST = manifest_format.FILENAME
RESTORED = "RESTORED"
FAILED = "FAILED"
TRASH_PREFIX = ".trash-"
_NAME = re.compile(r"^[0-9]{8}T[0-9]{6}Z-([0-9]{6,12})$")


def generation_seq(name: str) -> int | None:
    """The sequence number of a generation directory name, None for anything else."""
    match = _NAME.match(name)
    return int(match[1]) if match else None


@dataclasses.dataclass(frozen=True)
class Generation:
    name: str
    path: Path

    @property
    def seq(self) -> int:
        return generation_seq(self.name) or 0

    @property
    def images(self) -> Path:
        return self.path / "images"

    @property
    def files(self) -> Path:
        return self.path / "files"


@dataclasses.dataclass(frozen=True)
class Removed:
    """A generation the agent removed on its own, and why (for the log line)."""

    name: str
    why: str
