"""Container images without a registry: rootfs directory or static binary -> OCI image.

There is no registry to pull from, so images are made locally: `umoci` packs a directory into
an OCI image layout, and `ctr images import` puts it into the node's containerd (pods then use
`imagePullPolicy: Never` or `IfNotPresent`). The pause image is a 20-line static C program.
For code that reads image configs from a registry, the same layouts are pushed with `skopeo`
into a real local registry (Debian's docker-registry) on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from podckpt.devtools.cluster import node
from podckpt.devtools.cluster.binaries import cache_root
from podckpt.devtools.cluster.errors import ClusterError, PrerequisiteError

PAUSE_REF = "podckpt.local/pause:3.10"

# The sandbox's PID 1: sleeps, reaps orphans, exits 0 on SIGINT/SIGTERM (what the upstream
# pause does, minus the parts we do not need).
PAUSE_C = r"""
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction q = {.sa_handler = quit}, r = {.sa_handler = reap, .sa_flags = SA_RESTART};
    sigaction(SIGINT, &q, NULL);
    sigaction(SIGTERM, &q, NULL);
    sigaction(SIGCHLD, &r, NULL);
    for (;;) pause();
}
"""


def _run(argv: list[str], what: str, timeout: float = 300) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    except FileNotFoundError:
        raise PrerequisiteError(
            f"{argv[0]} is missing (needed to {what}); run hack/setup.sh"
        ) from None
    if proc.returncode != 0:
        raise ClusterError(f"{what}: `{' '.join(argv)}` failed: {proc.stderr.strip()[-1500:]}")
    return proc.stdout


def split_ref(ref: str) -> tuple[str, str]:
    """``repo[:tag]`` -> (repo, tag); a port in the registry host is not a tag."""
    m = re.fullmatch(r"(.+?)(?::([\w][\w.-]{0,127}))?", ref)
    if not m or "@" in ref:
        raise ClusterError(f"not an image reference with a tag: {ref!r}")
    repo, tag = m[1], m[2] or "latest"
    if "/" in tag:  # the colon was the registry port
        return ref, "latest"
    return repo, tag


def pause_binary() -> Path:
    """The static pause binary, compiled once and cached by source hash."""
    digest = hashlib.sha256(PAUSE_C.encode()).hexdigest()[:12]
    out = cache_root() / "images" / f"pause-{digest}" / "pause"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler = shutil.which("musl-gcc") or shutil.which("gcc")
    if compiler is None:
        raise PrerequisiteError("no C compiler for the pause image; run hack/setup.sh (musl-tools)")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "pause.c"
        src.write_text(PAUSE_C)
        tmp_out = Path(tmp) / "pause"
        _run([compiler, "-static", "-Os", "-s", "-o", str(tmp_out), str(src)], "build pause")
        shutil.move(tmp_out, out)
    return out


def build_layout(
    source: Path,
    ref: str,
    dest: Path,
    *,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    env: list[str] | None = None,
) -> Path:
    """Make an OCI image layout at ``dest`` holding ``ref``'s tag.

    ``source`` is a root filesystem directory, a static binary (becomes ``/<name>`` and the
    default entrypoint), or an existing OCI layout (re-tagged as ``ref``).
    """
    _, tag = split_ref(ref)
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if (source / "oci-layout").is_file():
        src_tag = _single_tag(source)
        _run(
            ["skopeo", "copy", "--quiet", f"oci:{source}:{src_tag}", f"oci:{dest}:{tag}"],
            "copy OCI layout",
        )
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rootfs = source
            if source.is_file():
                rootfs = Path(tmp) / "rootfs"
                rootfs.mkdir()
                shutil.copy2(source, rootfs / source.name)
                os.chmod(rootfs / source.name, 0o755)  # noqa: S103 (an executable)
                entrypoint = entrypoint or [f"/{source.name}"]
            elif not source.is_dir():
                raise ClusterError(f"image source {source} is neither a directory nor a file")
            _run(["umoci", "init", "--layout", str(dest)], "create OCI layout")
            _run(["umoci", "new", "--image", f"{dest}:{tag}"], "create image")
            _run(["umoci", "insert", "--image", f"{dest}:{tag}", str(rootfs), "/"], "add rootfs")
        config = ["umoci", "config", "--image", f"{dest}:{tag}", "--os", "linux"]
        config += ["--architecture", _arch()]
        for e in env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]:
            config += ["--config.env", e]
        for a in entrypoint or []:
            config += ["--config.entrypoint", a]
        for a in cmd or []:
            config += ["--config.cmd", a]
        _run(config, "set image config")
    _annotate(dest, ref, tag)
    return dest


def _arch() -> str:
    m = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def _single_tag(layout: Path) -> str:
    index = json.loads((layout / "index.json").read_text())
    tags = [
        m.get("annotations", {}).get("org.opencontainers.image.ref.name")
        for m in index.get("manifests", [])
    ]
    tags = [t for t in tags if t]
    if len(tags) != 1:
        raise ClusterError(f"OCI layout {layout} must hold exactly one tagged image, has {tags}")
    return str(tags[0])


def _annotate(layout: Path, ref: str, tag: str) -> None:
    """Name the image for containerd's importer (io.containerd.image.name = full ref)."""
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text())
    for m in index.get("manifests", []):
        ann = m.setdefault("annotations", {})
        if ann.get("org.opencontainers.image.ref.name") == tag:
            ann["io.containerd.image.name"] = ref
    index_path.write_text(json.dumps(index))


def import_layout(state: Path, layout: Path) -> None:
    """Import an OCI layout into the node's containerd (k8s.io namespace), unpacked."""
    with tempfile.NamedTemporaryFile(suffix=".tar", dir=state) as tmp:
        with tarfile.open(tmp.name, "w") as tar:
            for entry in sorted(layout.iterdir()):
                tar.add(entry, arcname=entry.name)
        node.ctr(state, "images", "import", "--no-unpack=false", tmp.name)


def load_image(
    state: Path,
    source: Path,
    ref: str,
    *,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
) -> Path:
    """rootfs dir / static binary / OCI layout -> image ``ref`` in the node's containerd.

    Returns the OCI layout (kept under the state dir, reusable for `push`).
    """
    safe = re.sub(r"[^\w.-]+", "_", ref)
    layout = build_layout(source, ref, state / "images" / safe, entrypoint=entrypoint, cmd=cmd)
    import_layout(state, layout)
    return layout


def push(layout: Path, registry: str, ref: str) -> str:
    """Push the single image of ``layout`` to ``registry`` (plain HTTP on 127.0.0.1).

    Returns the pushed reference (``<registry>/<repo>:<tag>``).
    """
    dest = registry_ref(registry, ref)
    _run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{layout}:{_single_tag(layout)}",
            f"docker://{dest}",
        ],
        f"push {dest}",
    )
    return dest


def registry_ref(registry: str, ref: str) -> str:
    """``ref``'s name in ``registry``: its own registry host (if any) replaced."""
    repo, tag = split_ref(ref)
    first = repo.split("/")[0]
    if "/" in repo and ("." in first or ":" in first or first == "localhost"):
        repo = repo.split("/", 1)[1]
    return f"{registry}/{repo}:{tag}"


def registry_config(state: Path, port: int) -> Path:
    """Config of Debian's docker-registry: 127.0.0.1 only, storage in the state dir."""
    d = state / "registry"
    (d / "data").mkdir(parents=True, exist_ok=True)
    cfg = (
        "version: 0.1\n"
        "log:\n  level: warn\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {d / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    path = d / "config.yml"
    path.write_text(cfg)
    return path
