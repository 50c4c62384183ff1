"""What the wheel ships: what runs in a cluster or builds for it, never the dev tools."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_ships_no_dev_tools(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("podckpt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[1] for n in names if n.startswith("podckpt/") and n.count("/") > 1}
    assert packages == {"api", "agent", "bundle", "cli", "operator"}
    assert "podckpt/api/contract/__init__.py" in names
    assert "podckpt/bundle/launcher.c" in names, "the bundle builder compiles it"
