"""The names of what injection adds to a pod, reserved for podckpt.

Both halves of the admission pipeline need them: `decide` refuses a pod that already uses one
(a volume of the user's with our name, or a sidecar mounting our checkpoint volume, would
reach the agent or the checkpointed memory) and recognises an injected pod by its bundle init
container; `inject` adds them. They live apart from both so that neither half imports the
other's internals.
"""

from __future__ import annotations

from podckpt.operator.domain import reserved

BUNDLE_VOLUME = "podckpt-bundle"
META_VOLUME = "podckpt-meta"
STORE_VOLUME = reserved.STORE_VOLUME  # the controller checks for it
#: The namespace's store key Secret, mounted into the bundle init container only.
STORE_KEY_VOLUME = "podckpt-store-key"
#: The agents' run directories (one subPath per container) and the user probes' answers.
RUN_VOLUME = "podckpt-run"
USER_VOLUME = "podckpt-user"
RESERVED_VOLUMES = (
    BUNDLE_VOLUME,
    META_VOLUME,
    STORE_VOLUME,
    STORE_KEY_VOLUME,
    RUN_VOLUME,
    USER_VOLUME,
)
BUNDLE_INIT_CONTAINER = "podckpt-bundle"
#: Names of podckpt's own init containers start with this.
RESERVED_CONTAINER_PREFIX = "podckpt-"
