"""Kubernetes server binaries built from the Go module proxy, cached by version.

There is no release download and no container registry on this project's machines, but the
Go module proxy is reachable and serves `k8s.io/kubernetes` itself. `go install ...@vX` is
refused for it (its go.mod `replace`s the `k8s.io/*` staging modules with local directories),
so we build through a *wrapper module*: it requires `k8s.io/kubernetes vX.Y.Z` and replaces
every staging module that release lists with its published `v0.Y.Z` twin. The staging list
is read from the release's own go.mod because it changes between releases.

A cold build takes minutes, so the result lives outside the repository in
``${PODCKPT_CACHE:-/var/cache/podckpt}/kubernetes/<version>/`` and a second run only checks
that the files are there. The directory appears atomically (build elsewhere, then rename) and
a file lock serialises concurrent builders (a developer and CI on the same machine).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from podckpt.devtools.cluster.errors import ClusterError, PrerequisiteError

# Newest release whose kubelet still runs on cgroup v1 (with `failCgroupV1: false`) and
# still falls back to the configured cgroup driver when the CRI runtime (Debian's
# containerd 1.6) lacks the RuntimeConfig RPC. See docs/cluster.md.
DEFAULT_VERSION = "v1.37.2"

BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl")

_STAMP = "BUILD-INFO.json"


def kubernetes_version() -> str:
    """The Kubernetes version to use: ``PODCKPT_K8S_VERSION`` or the project default."""
    return os.environ.get("PODCKPT_K8S_VERSION", DEFAULT_VERSION)


def cache_root() -> Path:
    """Root of the project's machine-wide cache (survives fresh clones, so CI stays fast)."""
    return Path(os.environ.get("PODCKPT_CACHE", "/var/cache/podckpt"))


def binaries_dir(version: str | None = None) -> Path:
    """Where the binaries of ``version`` live once built."""
    return cache_root() / "kubernetes" / (version or kubernetes_version())


def cached(version: str | None = None) -> Path | None:
    """The cache directory if every binary of ``version`` is already built, else None."""
    d = binaries_dir(version)
    if (d / _STAMP).is_file() and all((d / b).is_file() for b in BINARIES):
        return d
    return None


def find_go() -> str:
    """Path of the ``go`` tool; the usual /usr/local/go install counts even if not on PATH."""
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None
    )
    if go is None:
        raise PrerequisiteError(
            "Go is missing: the Kubernetes binaries are built from the Go module proxy; "
            "install Go >= 1.26 (https://go.dev/dl, into /usr/local/go) or put `go` on PATH"
        )
    return go


def _go_env(go: str, *names: str) -> list[str]:
    out = subprocess.run(
        [go, "env", *names], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    return out


def _check_go_version(go: str, needed: str) -> None:
    """Fail early, in one line, when the local Go is older than the release's ``go`` line."""
    (have,) = _go_env(go, "GOVERSION")
    m_have = re.match(r"go(\d+)\.(\d+)", have)
    m_need = re.match(r"(\d+)\.(\d+)", needed)
    if m_have and m_need:
        h = (int(m_have[1]), int(m_have[2]))
        n = (int(m_need[1]), int(m_need[2]))
        if h < n:
            raise PrerequisiteError(
                f"Go {needed} or newer is needed to build Kubernetes, found {have} ({go}); "
                "install a newer Go from https://go.dev/dl"
            )


def _check_proxy(go: str, version: str) -> None:
    """One-line error when the Go module proxy cannot be reached (instead of a go stack)."""
    (proxies,) = _go_env(go, "GOPROXY")
    proxy = next(
        (p for p in re.split(r"[,|]", proxies) if p.startswith(("http://", "https://"))), None
    )
    if proxy is None:
        return  # GOPROXY=direct/off: let go itself report what is wrong
    url = f"{proxy.rstrip('/')}/k8s.io/kubernetes/@v/{version}.info"
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:  # noqa: S310 (our own GOPROXY)
            resp.read()
    except urllib.error.HTTPError as e:
        if e.code in (404, 410):
            raise PrerequisiteError(
                f"Kubernetes {version} is not on the Go module proxy {proxy} "
                "(set PODCKPT_K8S_VERSION to an existing release, e.g. v1.37.2)"
            ) from None
        raise PrerequisiteError(
            f"the Go module proxy {proxy} answered HTTP {e.code} for k8s.io/kubernetes@{version}: "
            "check that the release exists (PODCKPT_K8S_VERSION), GOPROXY and the network"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        raise PrerequisiteError(
            f"no network to the Go module proxy {proxy} ({e}); the Kubernetes binaries are "
            f"built from it: restore access, set GOPROXY, or pre-fill {binaries_dir(version)}"
        ) from None


def staging_modules(release_gomod: str) -> list[str]:
    """The ``k8s.io/*`` modules a release's go.mod replaces with ./staging directories."""
    return sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", release_gomod, re.M)))


def wrapper_gomod(version: str, release_gomod: str) -> str:
    """The go.mod of the wrapper module for ``version`` (see the module docstring)."""
    m = re.fullmatch(r"v1\.(\d+)\.(\d+)", version)
    if not m:
        raise ClusterError(f"not a Kubernetes release version: {version!r} (want v1.Y.Z)")
    staging_version = f"v0.{m[1]}.{m[2]}"
    go_line = re.search(r"^go\s+(\S+)", release_gomod, re.M)
    godebug = re.findall(r"^godebug\s+.*$", release_gomod, re.M)
    lines = [
        "// Generated by podckpt.devtools.cluster.binaries: builds Kubernetes from the proxy.",
        "module podckpt.local/kubernetes-build",
        "",
        f"go {go_line[1] if go_line else '1.24'}",
        *godebug,
        "",
        f"require k8s.io/kubernetes {version}",
        "",
        "replace (",
        *(f"\t{mod} => {mod} {staging_version}" for mod in staging_modules(release_gomod)),
        ")",
        "",
    ]
    return "\n".join(lines)


def _ldflags(version: str) -> str:
    """Version stamping as Kubernetes' hack/lib/version.sh does, so `--version` is honest."""
    m = re.fullmatch(r"v(\d+)\.(\d+)\.\d+", version)
    major, minor = (m[1], m[2]) if m else ("1", "0")
    build_date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={build_date}",
        ]
    return " ".join(flags)


def ensure_binaries(
    version: str | None = None, log: Callable[[str], None] = lambda _msg: None
) -> Path:
    """Return the directory holding all Kubernetes binaries of ``version``, building if needed.

    Cached: seconds. Cold: one `go build` of five commands (6-12 min, ~2.5 GB on 2 cores).
    """
    version = version or kubernetes_version()
    hit = cached(version)
    if hit is not None:
        return hit
    go = find_go()
    target = binaries_dir(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{version}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another builder finishing first is a cache hit
        hit = cached(version)
        if hit is not None:
            return hit
        for stale in target.parent.glob(f".build-{version}-*"):
            shutil.rmtree(stale, ignore_errors=True)  # a builder killed mid-way (we hold the lock)
        _check_proxy(go, version)
        return _build(go, version, target, log)


def _build(go: str, version: str, target: Path, log: Callable[[str], None]) -> Path:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f".build-{version}-", dir=target.parent))
    try:
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
        # Go's build cache (4.5 GB for these five commands) goes with the build directory: the
        # binaries are cached by version, and a CI disk held it for the whole run for nothing.
        env.setdefault("GOCACHE", str(work / "gocache"))
        log(f"fetching k8s.io/kubernetes@{version} go.mod from the Go module proxy")
        info = json.loads(
            _run([go, "mod", "download", "-json", f"k8s.io/kubernetes@{version}"], work, env)
        )
        release_gomod = Path(info["GoMod"]).read_text()
        go_line = re.search(r"^go\s+(\S+)", release_gomod, re.M)
        if go_line:
            _check_go_version(go, go_line[1])
        (work / "go.mod").write_text(wrapper_gomod(version, release_gomod))
        out = work / "bin"
        out.mkdir()
        pkgs = [f"k8s.io/kubernetes/cmd/{b}" for b in BINARIES]
        log(f"building {', '.join(BINARIES)} {version} (cold: 6-12 min on 2 cores)")
        _run(
            [go, "build", "-trimpath", "-ldflags", _ldflags(version), "-o", str(out), *pkgs],
            work,
            env,
        )
        (go_version,) = _go_env(go, "GOVERSION")
        (out / _STAMP).write_text(
            json.dumps(
                {
                    "version": version,
                    "go": go_version,
                    "build_seconds": round(time.monotonic() - started, 1),
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "wrapper_go_mod": (work / "go.mod").read_text(),
                },
                indent=2,
            )
        )
        if target.exists():
            shutil.rmtree(target)  # an incomplete earlier attempt (no stamp)
        out.rename(target)
        log(f"built Kubernetes {version} in {time.monotonic() - started:.0f} s into {target}")
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        if "dial tcp" in proc.stderr or "no such host" in proc.stderr:
            raise PrerequisiteError(
                "no network to the Go module proxy while building Kubernetes "
                f"(`{' '.join(argv[:3])}` failed); restore access or set GOPROXY"
            )
        raise ClusterError(f"`{' '.join(argv[:3])} ...` failed in {cwd}:\n{tail}")
    return proc.stdout


def build_info(version: str | None = None) -> dict[str, object]:
    """The stamp written by the build (version, Go, build time), for docs and benchmarks."""
    d = cached(version)
    if d is None:
        return {}
    data: dict[str, object] = json.loads((d / _STAMP).read_text())
    return data
