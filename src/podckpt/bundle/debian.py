"""Which Debian mirror to build root filesystems and bundles from.

The host's own apt configuration already names a mirror it can reach; using it (instead of a
host name written into our code) keeps every build working on machines that reach Debian only
through a local mirror or proxy. `PODCKPT_DEBIAN_MIRROR` overrides it.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

MIRROR_ENV = "PODCKPT_DEBIAN_MIRROR"
_APT_DIR = Path("/etc/apt")


class MirrorNotFoundError(RuntimeError):
    """Neither the environment nor the host's apt sources name a Debian mirror."""


def _mirrors_in_apt_sources(apt_dir: Path) -> list[str]:
    found: list[str] = []
    deb822 = sorted((apt_dir / "sources.list.d").glob("*.sources"))
    for path in deb822:
        for match in re.finditer(r"^URIs:\s*(.+)$", path.read_text(errors="replace"), re.M):
            found.extend(match[1].split())
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb":
                found.append(words[1])
    # The main archive, not the security or backports archives beside it.
    return [m.rstrip("/") for m in found if m.rstrip("/").endswith("/debian")]


@functools.cache
def debian_mirror(apt_dir: Path = _APT_DIR) -> str:
    """The mirror URL (e.g. `http://HOST/debian`), from the environment or the host's apt."""
    configured = os.environ.get(MIRROR_ENV)
    if configured:
        return configured.rstrip("/")
    mirrors = _mirrors_in_apt_sources(apt_dir)
    if not mirrors:
        raise MirrorNotFoundError(
            f"no Debian mirror in {apt_dir}/sources.list(.d); set {MIRROR_ENV}=http://HOST/debian"
        )
    return mirrors[0]
