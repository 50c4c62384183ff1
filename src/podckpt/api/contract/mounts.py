"""Where the webhook mounts what the agent reads: fixed paths, because the bundle's launcher
and the agent's defaults are built for them (`podckpt.api.contract`, "Mounts")."""

from __future__ import annotations

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
