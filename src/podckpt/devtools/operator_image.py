"""The operator image (webhook + controller) built without Docker.

A Debian bookworm minbase root with python3 (cached, built by debootstrap) plus the pinned
runtime dependencies copied from this project's virtualenv (same Debian release, same CPython
3.11 ABI, so compiled wheels such as pydantic-core and cryptography work unchanged) plus the
operator's packages from `src/`, packed as an OCI image layout with `umoci`. `skopeo copy`
pushes it, `ctr images import` loads it. `Dockerfile.operator` builds the same with Docker.

    python -m podckpt.devtools.operator_image --layout _artifacts/operator-oci [--tag T]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

from podckpt.bundle.debian import debian_mirror
from podckpt.devtools import rootfs

IMAGE_NAME = "podckpt.local/podckpt-operator"
RUNTIME_DISTRIBUTION = "podckpt"
#: The extra of pyproject.toml that lists the webhook's and controller's dependencies.
OPERATOR_EXTRA = "operator"
SITE = "/opt/podckpt/site-packages"
#: Operator code only: the build tools and dev tools stay out of the image.
#: The operator and the key API it shares with the agent (import-linter keeps the operator off
#: the agent and the bundle builder, so neither ships in this image).
PACKAGES = ("__init__.py", "py.typed", "api", "operator")
MODULES: tuple[str, ...] = ()
_RECIPE = 1
_SRC = Path(__file__).resolve().parents[1]


def base_rootfs() -> Path:
    """Debian bookworm minbase with python3 and CA certificates (cached)."""
    name = f"operator-base-bookworm-py{sys.version_info[0]}{sys.version_info[1]}-r{_RECIPE}"

    def build(root: Path) -> None:
        rootfs.require_root_and_debootstrap()
        rootfs._run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,ca-certificates",
                "bookworm",
                str(root),
                debian_mirror(),
            ],
            "debootstrap bookworm (operator image base)",
        )
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()

    return rootfs.cached_build(name, build)


def _requirement_names(dist: str, extras: tuple[str, ...] = ()) -> Iterator[str]:
    """Names of what `dist` requires: its plain requirements plus those of `extras`."""
    for requirement in importlib.metadata.requires(dist) or ():
        extra = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", requirement)
        if extra is not None and extra[1] not in extras:
            continue
        yield re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0]


def runtime_closure(
    root: str = RUNTIME_DISTRIBUTION, extras: tuple[str, ...] = (OPERATOR_EXTRA,)
) -> list[importlib.metadata.Distribution]:
    """The installed distributions that `root` with `extras` needs at run time (the operator
    extra; never the dev extra)."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(_requirement_names(root, extras))
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional dependency for another platform or Python
        seen[key] = dist
        todo += _requirement_names(name)
    return list(seen.values())


def stage_python(dest: Path) -> None:
    """Copy the runtime distributions and podckpt's operator packages into `dest`."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    for dist in runtime_closure():
        for file in dist.files or ():
            source = Path(str(dist.locate_file(file)))
            try:
                relative = source.resolve().relative_to(purelib.resolve())
            except ValueError:
                continue  # scripts in bin/ and the like
            if "__pycache__" in relative.parts:
                continue
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    package = dest / "podckpt"
    package.mkdir(parents=True, exist_ok=True)
    for name in (*PACKAGES, *MODULES):
        source = _SRC / name
        if source.is_dir():
            shutil.copytree(
                source, package / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        elif source.exists():
            shutil.copy2(source, package / name)


def _umoci(*args: str) -> None:
    proc = subprocess.run(["umoci", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"umoci {args[0]} failed: {proc.stderr.strip()[-1500:]}")


def build_image(layout: Path, tag: str = "latest") -> str:
    """Write the OCI image layout; return the image reference."""
    base = base_rootfs()
    if layout.exists():
        shutil.rmtree(layout)
    layout.parent.mkdir(parents=True, exist_ok=True)
    image = f"{layout}:{tag}"
    _umoci("init", "--layout", str(layout))
    _umoci("new", "--image", image)
    _umoci("insert", "--image", image, str(base), "/")
    with tempfile.TemporaryDirectory(prefix="podckpt-operator-image-") as tmp:
        staged = Path(tmp) / "site-packages"
        stage_python(staged)
        _umoci("insert", "--image", image, str(staged), SITE)
    _umoci(
        "config",
        "--image",
        image,
        "--os",
        "linux",
        "--architecture",
        "amd64",
        "--config.user",
        "65532:65532",
        "--config.workingdir",
        "/",
        "--config.env",
        f"PYTHONPATH={SITE}",
        "--config.env",
        "PYTHONDONTWRITEBYTECODE=1",
        "--config.env",
        "PYTHONUNBUFFERED=1",
        "--config.cmd",
        "python3",
        "--config.cmd",
        "-m",
        "--config.cmd",
        "podckpt.operator.webhook",
        "--config.label",
        f"org.opencontainers.image.title={IMAGE_NAME}",
    )
    _umoci("gc", "--layout", str(layout))
    return f"{IMAGE_NAME}:{tag}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--layout", type=Path, required=True, help="OCI layout directory")
    parser.add_argument("--tag", default="latest")
    args = parser.parse_args(argv)
    print(build_image(args.layout, args.tag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
