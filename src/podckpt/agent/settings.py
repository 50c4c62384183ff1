"""The pod's keys as the agent sees them now: re-read from the downward-API files on demand.

The kubelet rewrites the labels and annotations files when the pod's metadata changes, so
reading them at the moment of SIGTERM makes `kubectl label pod P memverge.ai/checkpoint-mode-`
take effect on a running pod. A value that became invalid while running is logged and the last
valid settings stay in force: a typo must not silently turn checkpointing off.

The namespace's keys come from the webhook (`--namespace-defaults`, resolved when the pod was
admitted: the agent cannot read the Namespace object) and rank below the pod's own, as
everywhere (`podckpt.api.parse_settings`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from podckpt.api import (
    CheckpointSettings,
    DownwardAPIFormatError,
    InvalidValueError,
    Key,
    for_container,
    parse_settings,
    read_downward_file,
)

from . import log
from .errors import UsageError


class LiveSettings:
    def __init__(
        self,
        labels_file: Path | None,
        annotations_file: Path | None,
        namespace_labels: Mapping[str, str] | None = None,
        namespace_annotations: Mapping[str, str] | None = None,
    ) -> None:
        self.labels_file = labels_file
        self.annotations_file = annotations_file
        self.namespace_labels = dict(namespace_labels or {})
        self.namespace_annotations = dict(namespace_annotations or {})
        self.last: CheckpointSettings | None = None

    def read(self) -> CheckpointSettings:
        """Parse both files now, then the container's own `MMC_*` variables (which win for
        this container). Without a labels file checkpointing is on (the agent was wrapped
        around the entrypoint on purpose) unless a key says otherwise; with one,
        `checkpoint-mode` decides (pod annotation, pod label, namespace)."""
        try:
            labels = _read(self.labels_file)
            annotations = _read(self.annotations_file)
            settings = for_container(
                parse_settings(
                    labels,
                    annotations,
                    namespace_labels=self.namespace_labels,
                    namespace_annotations=self.namespace_annotations,
                ),
                os.environ,
            )
        except (InvalidValueError, DownwardAPIFormatError) as exc:
            raise UsageError(str(exc)) from exc
        if self.labels_file is None and Key.CHECKPOINT_MODE not in settings.sources:
            settings = dataclasses.replace(settings, mode=True)
        self.last = settings
        return settings

    def current(self) -> CheckpointSettings:
        """Fresh settings, or the last valid ones if the files are unreadable or invalid."""
        try:
            return self.read()
        except UsageError as exc:
            if self.last is None:
                raise
            log.emit("settings", "invalid", error=str(exc), kept="last valid settings")
            return self.last


def _read(path: Path | None) -> dict[str, str]:
    """A downward-API file's entries; whatever is wrong with it is one UsageError naming it."""
    if path is None:
        return {}
    try:
        return read_downward_file(path)
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
