"""The agent bundle: a self-contained directory with the agent, a Python runtime and CRIU.

Why: checkpointed containers run the user's own image (glibc, musl, distroless, scratch), which
has neither Python nor CRIU and maybe not even a libc or a shell. The init container copies this
bundle into an emptyDir that every checkpointed container mounts at `MOUNT_PATH`, and the
webhook wraps the container's entrypoint with `MOUNT_PATH/bin/podckpt-agent run -- ARGV`.

The bundle is built from Debian packages only (CRIU >= 4.2 and CPython from Debian sid, with
their own glibc and dynamic loader) plus the agent's sources; see `docs/bundle.md` for the
layout, why this technique was chosen and the capabilities it needs. The build itself
(`podckpt.bundle.build`) is a developer tool: it needs apt, dpkg-deb and a C compiler, none of
which the agent or the key API may import.
"""

from .build import (
    BUNDLE_CRIU,
    BUNDLE_PYTHON,
    MOUNT_PATH,
    BundleBuildError,
    build_bundle,
    bundle_cache_dir,
)

__all__ = [
    "BUNDLE_CRIU",
    "BUNDLE_PYTHON",
    "MOUNT_PATH",
    "BundleBuildError",
    "build_bundle",
    "bundle_cache_dir",
]
