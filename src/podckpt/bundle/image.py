"""The init-container image: the bundle at /.podckpt and nothing else, built without Docker.

Why no base image: the bundle's launcher is a static ELF and its copier is built into it, so the
image needs no shell, no libc and no coreutils; a one-layer image is also the fastest to pull.
The image's default command copies the bundle into the emptyDir mounted at INSTALL_TARGET:

    /.podckpt/bin/podckpt-agent install --to /podckpt

The webhook mounts the same emptyDir at /.podckpt in every checkpointed container.
`umoci` (a Debian package) writes the OCI image layout; `ctr images import` or `skopeo copy`
take it from there. docker/Dockerfile.bundle builds the same image with Docker or buildah.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from podckpt.agent import AGENT_VERSION

from .build import MOUNT_PATH, BundleBuildError

IMAGE_NAME = "podckpt.local/podckpt-bundle"
INSTALL_TARGET = "/podckpt"
"""Where the init container mounts the emptyDir it fills."""

ENTRYPOINT = [f"{MOUNT_PATH}/bin/podckpt-agent"]
CMD = ["install", "--to", INSTALL_TARGET]


def _umoci(*args: str) -> None:
    try:
        done = subprocess.run(["umoci", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise BundleBuildError(
            "umoci not found: run hack/setup.sh (apt-get install umoci)"
        ) from exc
    if done.returncode != 0:
        raise BundleBuildError(f"umoci {args[0]} failed: {done.stderr.strip()[-1500:]}")


def image_tag(bundle: Path) -> str:
    """`<agent version>-<bundle key>`: a new agent or new packages give a new tag."""
    return f"{AGENT_VERSION}-{bundle.resolve().name.rsplit('-', 1)[-1]}"


def build_image(bundle: Path, layout: Path, tag: str | None = None) -> str:
    """Write an OCI image layout at `layout` (replaced) holding the bundle; return the ref."""
    tag = tag or image_tag(bundle)
    if layout.exists():
        shutil.rmtree(layout)
    layout.parent.mkdir(parents=True, exist_ok=True)
    image = f"{layout}:{tag}"
    _umoci("init", "--layout", str(layout))
    _umoci("new", "--image", image)
    with tempfile.TemporaryDirectory(prefix="podckpt-image-") as tmp:
        # Files owned by root, world-readable: any container user may run the agent.
        staged = Path(tmp) / "podckpt"
        shutil.copytree(bundle, staged, symlinks=True)
        os.chmod(staged, 0o755)  # noqa: S103 - read and executed by any container user
        _umoci("insert", "--image", image, str(staged), MOUNT_PATH)
    config = ["config", "--image", image, "--os", "linux", "--architecture", "amd64"]
    config += ["--config.workingdir", "/", "--config.user", "0:0"]
    for a in ENTRYPOINT:
        config += ["--config.entrypoint", a]
    for a in CMD:
        config += ["--config.cmd", a]
    config += ["--config.label", f"org.opencontainers.image.title={IMAGE_NAME}"]
    _umoci(*config)
    ref = f"{IMAGE_NAME}:{tag}"
    # containerd's importer names the image from this annotation.
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text())
    for m in index.get("manifests", []):
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            m["annotations"]["io.containerd.image.name"] = ref
    index_path.write_text(json.dumps(index))
    _umoci("gc", "--layout", str(layout))
    return ref
