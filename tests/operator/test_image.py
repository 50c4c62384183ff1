"""The operator image, built without Docker, runs the operator's code under its own Python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from podckpt.devtools import rootfs
from podckpt.devtools.operator_image import SITE, build_image

pytestmark = pytest.mark.slow


def test_operator_image(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("building root filesystems needs root")
    for tool in ("umoci", "debootstrap"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing; run hack/setup.sh")
    try:
        ref = build_image(tmp_path / "layout", "test")
    except rootfs.RootfsError as exc:
        pytest.fail(f"cannot build the base root: {exc}")
    assert ref == "podckpt.local/podckpt-operator:test"
    bundle = tmp_path / "unpacked"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{tmp_path / 'layout'}:test", str(bundle)],
        check=True,
        capture_output=True,
    )
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["user"]["uid"] == 65532, "the image runs as non-root"
    assert config["process"]["args"] == ["python3", "-m", "podckpt.operator.webhook"]
    probe = (
        "import sys; sys.modules['kubernetes'] = None\n"
        "import podckpt.operator.webhook.server, podckpt.operator.controller.handlers\n"
        "import podckpt.operator.certs\n"
        "from podckpt.operator.settings import OperatorSettings\n"
        "print(OperatorSettings().domain)\n"
    )
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "--fork",
            "chroot",
            str(bundle / "rootfs"),
            "/usr/bin/env",
            f"PYTHONPATH={SITE}",
            "python3",
            "-c",
            probe,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "podckpt.io"
    # build tools and dev tools stay out of the image
    package = bundle / "rootfs" / SITE.lstrip("/") / "podckpt"
    assert not (package / "devtools").exists()
    assert not (package / "bundle").exists()
