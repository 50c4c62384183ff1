"""The init-container image: built without Docker, it fills an emptyDir that then runs the agent."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from podckpt.bundle import MOUNT_PATH
from podckpt.bundle.image import CMD, ENTRYPOINT, INSTALL_TARGET, build_image
from podckpt.devtools.bundlecheck.roots import busybox_root, static_root
from podckpt.devtools.sandbox import Bind, Sandbox

pytestmark = [pytest.mark.bundle, pytest.mark.criu]

DOCKERFILE = Path(__file__).resolve().parents[2] / "docker" / "Dockerfile.bundle"


def _unpack(layout: Path, tag: str, dest: Path) -> Path:
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{tag}", str(dest)],
        check=True,
        capture_output=True,
    )
    return dest


def test_image_installs_the_bundle_into_an_emptydir(
    bundle: Path, sandbox_factory: Callable[..., Sandbox], tmp_path: Path
) -> None:
    layout = tmp_path / "oci"
    ref = build_image(bundle, layout)
    tag = ref.rsplit(":", 1)[1]
    unpacked = _unpack(layout, tag, tmp_path / "unpacked")
    config = json.loads((unpacked / "config.json").read_text())
    argv = config["process"]["args"]
    assert argv == [*ENTRYPOINT, *CMD]
    # Only the bundle: no shell, no libc.
    assert sorted(p.name for p in (unpacked / "rootfs").iterdir()) == [".podckpt"]

    # The init container: the image's own command, no capabilities at all.
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    init = sandbox_factory(
        unpacked / "rootfs", argv, binds=[Bind(empty_dir, INSTALL_TARGET)], capabilities=[]
    )
    assert init.wait(30) == 0, init.stderr_text()
    assert (empty_dir / ".installed").is_file()

    # The application container: the emptyDir at /.podckpt, read-only; an image with no libc.
    for root in (static_root(), busybox_root()):
        app = sandbox_factory(
            root,
            [f"{MOUNT_PATH}/bin/podckpt-agent", "--version"],
            binds=[Bind(empty_dir, MOUNT_PATH, readonly=True)],
            capabilities=[],
        )
        assert app.wait(30) == 0, app.stderr_text()
        assert app.stdout_text().startswith("podckpt-agent ")


def test_dockerfile_builds_the_same_image() -> None:
    """docker/Dockerfile.bundle must say what build_image does (it cannot be run here)."""
    text = DOCKERFILE.read_text()
    assert "FROM scratch" in text
    assert f"COPY --from=build /out {MOUNT_PATH}" in text
    assert f"ENTRYPOINT {json.dumps(ENTRYPOINT)}" in text
    assert f"CMD {json.dumps(CMD)}" in text
    assert re.search(r"python3 -m podckpt\.bundle build --out /out", text)
