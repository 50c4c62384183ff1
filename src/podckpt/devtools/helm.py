"""`helm`, built once from the Go module proxy and cached by version.

Debian bookworm has no helm package and this project's machines reach no release downloads,
but the Go module proxy serves `helm.sh/helm/v3`, and its `cmd/helm` builds with a plain
`go install` (no replace directives). The binary lands in
``${PODCKPT_CACHE:-/var/cache/podckpt}/helm/<version>/helm`` atomically (built elsewhere, then
renamed) under a file lock, like the Kubernetes binaries (`cluster.binaries`). Cold: a few
minutes on 2 cores; cached: a stat.

    python -m podckpt.devtools.helm        # prints the path, building it if needed
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from podckpt.devtools.cluster.binaries import cache_root, find_go
from podckpt.devtools.cluster.errors import ClusterError, PrerequisiteError

DEFAULT_VERSION = "v3.22.0"
MODULE = "helm.sh/helm/v3"


def helm_version() -> str:
    return os.environ.get("PODCKPT_HELM_VERSION", DEFAULT_VERSION)


def helm_path(version: str | None = None) -> Path:
    return cache_root() / "helm" / (version or helm_version()) / "helm"


def ensure_helm(version: str | None = None) -> Path:
    """The cached helm binary of `version`, built with `go install` if missing."""
    version = version or helm_version()
    target = helm_path(version)
    if target.is_file():
        return target
    go = find_go()
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent.parent / f".{version}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another builder finishing first is a cache hit
        if target.is_file():
            return target
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f".build-{version}-", dir=target.parent.parent))
        try:
            env = {
                **os.environ,
                "CGO_ENABLED": "0",
                "GOBIN": str(work / "bin"),
                "GOTOOLCHAIN": "local",
                "GOFLAGS": "-trimpath",
            }
            ldflags = f"-s -w -X {MODULE}/internal/version.version={version}"
            proc = subprocess.run(
                [go, "install", "-ldflags", ldflags, f"{MODULE}/cmd/helm@{version}"],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
                if "dial tcp" in proc.stderr or "no such host" in proc.stderr:
                    raise PrerequisiteError(
                        f"no network to the Go module proxy to build helm {version}; restore"
                        f" access, set GOPROXY, or put a helm binary at {target}"
                    )
                raise ClusterError(f"building helm {version} failed:\n{tail}")
            target.parent.mkdir(parents=True, exist_ok=True)
            staged = target.parent / ".helm.new"
            shutil.move(work / "bin" / "helm", staged)
            staged.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(
            f"podckpt: built helm {version} in {time.monotonic() - started:.0f} s ({target})",
            file=sys.stderr,
        )
        return target


if __name__ == "__main__":
    print(ensure_helm())
