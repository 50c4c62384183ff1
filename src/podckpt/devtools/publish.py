"""`make images REGISTRY=... TAG=...`: build the operator and bundle images and push them.

No Docker: the operator image is packed by `umoci` (`operator_image`), the bundle image as
well (`podckpt.bundle.image`), and `skopeo copy` pushes each OCI layout to the registry the
user names. The pushed names are `<REGISTRY>/podckpt-operator:<TAG>` and
`<REGISTRY>/podckpt-bundle:<TAG>`: the names the Helm chart derives from its values
`image.registry` and `image.tag`, and the names in `config/images.env` (kustomize) for the
default registry and tag (`IMAGE_NAMES` below is the one place they are spelled; a unit test
holds the chart and config/ to it).

Credentials are skopeo's own (`skopeo login REGISTRY`, or `REGISTRY_AUTH_FILE`). A registry on
loopback (127.0.0.0/8, localhost) is spoken to over plain HTTP, as Docker does; others over
HTTPS unless `--insecure` is given.

    python -m podckpt.devtools.publish --registry R --tag T [--insecure] [--layouts DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

#: Repository names under the registry, the same in the chart (values.yaml) and config/.
IMAGE_NAMES = {"operator": "podckpt-operator", "bundle": "podckpt-bundle"}
DEFAULT_REGISTRY = "ghcr.io/podckpt"

_REGISTRY = re.compile(r"[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*", re.IGNORECASE)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class PublishError(Exception):
    """Building or pushing an image failed; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Published:
    operator: str
    bundle: str

    def helm_flags(self, registry: str, tag: str) -> str:
        return f"--set image.registry={registry} --set image.tag={tag}"

    def images_env(self) -> str:
        return f"OPERATOR_IMAGE={self.operator}\nBUNDLE_IMAGE={self.bundle}\n"


def image_ref(registry: str, component: str, tag: str) -> str:
    """`<registry>/<repository of component>:<tag>` after checking both parts."""
    if not _REGISTRY.fullmatch(registry):
        raise PublishError(f"REGISTRY: {registry!r} is not a registry host[/path]")
    if not _TAG.fullmatch(tag):
        raise PublishError(f"TAG: {tag!r} is not an image tag (letters, digits, _ . -)")
    return f"{registry.rstrip('/')}/{IMAGE_NAMES[component]}:{tag}"


def plain_http(registry: str) -> bool:
    """Loopback registries speak plain HTTP (as Docker assumes)."""
    host = registry.split("/", 1)[0].rsplit(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _single_tag(layout: Path) -> str:
    index = json.loads((layout / "index.json").read_text())
    tags = [
        m.get("annotations", {}).get("org.opencontainers.image.ref.name")
        for m in index.get("manifests", [])
    ]
    tags = [t for t in tags if t]
    if len(tags) != 1:
        raise PublishError(f"OCI layout {layout} holds {tags}, not exactly one tagged image")
    return str(tags[0])


def push(layout: Path, dest: str, *, tls_verify: bool) -> None:
    """`skopeo copy oci:LAYOUT:TAG docker://DEST`."""
    argv = ["skopeo", "copy", "--quiet", f"--dest-tls-verify={str(tls_verify).lower()}"]
    argv += [f"oci:{layout}:{_single_tag(layout)}", f"docker://{dest}"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900)
    except FileNotFoundError:
        raise PublishError(
            "skopeo is missing: run hack/setup.sh (apt-get install skopeo)"
        ) from None
    if proc.returncode != 0:
        raise PublishError(f"push {dest}: {proc.stderr.strip()[-1500:]}")


def build_layouts(work: Path, tag: str) -> tuple[Path, Path]:
    """(operator layout, bundle layout), both tagged `tag`."""
    from podckpt.bundle import build_bundle  # noqa: PLC0415 - heavy, only when building
    from podckpt.bundle.image import build_image as build_bundle_image  # noqa: PLC0415
    from podckpt.devtools.operator_image import build_image as build_operator  # noqa: PLC0415

    operator_layout, bundle_layout = work / "operator-oci", work / "bundle-oci"
    build_operator(operator_layout, tag)
    build_bundle_image(build_bundle(), bundle_layout, tag)
    return operator_layout, bundle_layout


def publish(
    registry: str, tag: str, *, insecure: bool = False, layouts: Path | None = None
) -> Published:
    """Build both images and push them; return their names in the registry."""
    names = Published(image_ref(registry, "operator", tag), image_ref(registry, "bundle", tag))
    tls_verify = not (insecure or plain_http(registry))
    with tempfile.TemporaryDirectory(prefix="podckpt-publish-") as tmp:
        operator_layout, bundle_layout = build_layouts(layouts or Path(tmp), tag)
        push(operator_layout, names.operator, tls_verify=tls_verify)
        push(bundle_layout, names.bundle, tls_verify=tls_verify)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--registry", default=DEFAULT_REGISTRY, help="host[:port][/path]")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--insecure", action="store_true", help="plain HTTP / no TLS check")
    parser.add_argument("--layouts", type=Path, help="keep the OCI layouts in this directory")
    args = parser.parse_args(argv)
    try:
        names = publish(args.registry, args.tag, insecure=args.insecure, layouts=args.layouts)
    except PublishError as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    print(f"pushed {names.operator}\npushed {names.bundle}")
    print(
        f"\nHelm:      helm install podckpt charts/podckpt -n podckpt-system --create-namespace"
        f" {names.helm_flags(args.registry, args.tag)}"
    )
    print(
        f"kustomize: put these lines in config/images.env (or an overlay's copy):\n"
        f"{names.images_env()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
