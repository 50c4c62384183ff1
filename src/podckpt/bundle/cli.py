"""`python -m podckpt.bundle`: build the agent bundle and its init-container image.

build [--out DIR] [--force]   build (or reuse from $PODCKPT_CACHE/bundle) and print its path
image --layout DIR [--tag T]  also write the init-container image as an OCI layout (umoci)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .build import BundleBuildError, build_bundle, tree_size
from .image import build_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m podckpt.bundle", description="Build the podckpt agent bundle."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the bundle (cached) and print its directory")
    b.add_argument("--out", type=Path, help="also copy the finished bundle to this directory")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    i = sub.add_parser("image", help="build the bundle, then the init-container OCI image")
    i.add_argument("--layout", type=Path, required=True, help="OCI image layout to (re)write")
    i.add_argument("--tag", help="image tag (default: agent version and bundle key)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            path = build_bundle(args.out, force=args.force)
            print(path)
            print(f"bundle: {tree_size(path) / 1e6:.1f} MB", file=sys.stderr)
        else:
            print(build_image(build_bundle(), args.layout, args.tag))
    except BundleBuildError as exc:
        print(f"bundle: {exc}", file=sys.stderr)
        return 1
    return 0
