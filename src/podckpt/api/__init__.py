"""The key API: every `memverge.ai/` key (and podckpt's own) parsed and validated in one place.

Standard library only: the agent imports this module inside arbitrary container images.
"""

from .container import (
    CHECKPOINT_FILES_ENV,
    CHECKPOINT_OPTIONS_ENV,
    CONTAINER_VARIABLES,
    RESTORE_OPTIONS_ENV,
    for_container,
)
from .downward import format_downward_text, parse_downward_text, read_downward_file
from .errors import DownwardAPIFormatError, InvalidValueError
from .keys import (
    DEFAULT_EXCLUDED_CONTAINERS,
    DEFAULT_PREFIX,
    PREFIX_ENV,
    Key,
    NamespaceKey,
    key_prefix,
    qualified,
)
from .settings import (
    DEFAULT_KEEP,
    CheckpointSettings,
    IoUring,
    IpcNamespace,
    RestoreMode,
    RestorePolicy,
    Source,
    injection_enabled,
    parse_settings,
)
from .values import parse_quantity

__all__ = [
    "CHECKPOINT_FILES_ENV",
    "CHECKPOINT_OPTIONS_ENV",
    "CONTAINER_VARIABLES",
    "DEFAULT_EXCLUDED_CONTAINERS",
    "DEFAULT_KEEP",
    "DEFAULT_PREFIX",
    "PREFIX_ENV",
    "RESTORE_OPTIONS_ENV",
    "CheckpointSettings",
    "DownwardAPIFormatError",
    "InvalidValueError",
    "IoUring",
    "IpcNamespace",
    "Key",
    "NamespaceKey",
    "RestoreMode",
    "RestorePolicy",
    "Source",
    "for_container",
    "format_downward_text",
    "injection_enabled",
    "key_prefix",
    "parse_downward_text",
    "parse_quantity",
    "parse_settings",
    "qualified",
    "read_downward_file",
]
