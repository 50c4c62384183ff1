"""Container images without a registry to pull from: OCI layouts imported into every node.

Images are made locally: `umoci` packs a directory (or a static binary) into an OCI image
layout, `skopeo` turns a user's OCI layout or archive (`oci-archive`, `docker-archive`) into
one, and `ctr images import` puts it into each node's containerd (pods then use
`imagePullPolicy: Never` or `IfNotPresent`). Every layout loaded is recorded in the cluster's
state, so a node added later (or one that was down) gets it too. The pause image is a 20-line
static C program. For code that reads image configs from a registry, the same layouts are
pushed with `skopeo` into a real local registry (Debian's docker-registry) on 127.0.0.1.
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

from podckpt.devtools.cluster import components, containerd
from podckpt.devtools.cluster.binaries import cache_root
from podckpt.devtools.cluster.errors import ClusterError, PrerequisiteError
from podckpt.devtools.cluster.state import NODE_UP, ClusterBase, NodeState

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
    user: str | None = None,
) -> Path:
    """Make an OCI image layout at ``dest`` holding ``ref``'s tag (``user``: its USER).

    ``source`` is a root filesystem directory, a static binary (becomes ``/<name>`` and the
    default entrypoint), an existing OCI layout, or an image archive (``oci-archive`` or
    ``docker-archive``, e.g. from `skopeo copy`, `buildah push` or `docker save`); layouts and
    archives are re-tagged as ``ref`` and must hold exactly one image.
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
    elif source.is_file() and tarfile.is_tarfile(source):
        _run(
            [
                "skopeo",
                "copy",
                "--quiet",
                f"{_archive_transport(source)}:{source}",
                f"oci:{dest}:{tag}",
            ],
            f"copy image archive {source}",
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
        if user is not None:
            config += ["--config.user", user]
        _run(config, "set image config")
    _annotate(dest, ref, tag)
    return dest


def _archive_transport(archive: Path) -> str:
    """skopeo's transport for a tar archive: an OCI layout in a tar, or `docker save`'s."""
    with tarfile.open(archive) as tar:
        names = {n.lstrip("./") for n in tar.getnames()}
    if "oci-layout" in names:
        return "oci-archive"
    if "manifest.json" in names:
        return "docker-archive"
    raise ClusterError(
        f"{archive} is a tar archive but neither an OCI layout (no oci-layout file) nor "
        "`docker save` output (no manifest.json)"
    )


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


def import_layout(node_dir: Path, layout: Path) -> None:
    """Import an OCI layout into a node's containerd (k8s.io namespace), unpacked."""
    with tempfile.NamedTemporaryFile(suffix=".tar", dir=node_dir) as tmp:
        with tarfile.open(tmp.name, "w") as tar:
            for entry in sorted(layout.iterdir()):
                tar.add(entry, arcname=entry.name)
        containerd.ctr(node_dir, "images", "import", "--no-unpack=false", tmp.name)


def layout_dir(state_dir: Path, ref: str) -> Path:
    """Where the layout of ``ref`` is kept (it is imported again into nodes added later)."""
    return state_dir / "images" / re.sub(r"[^\w.-]+", "_", ref)


def load(c: ClusterBase, layout: Path, ref: str) -> None:
    """Import ``layout`` (holding ``ref``) into every running node, and record it for the
    nodes that are down or added later."""
    c.state.images[ref] = str(layout)
    for node in c.state.nodes:
        if node.status == NODE_UP:
            import_layout(node.path, layout)
            node.images = sorted({*node.images, ref})
        else:  # it may hold an older image of that name: import again when it starts
            node.images = [i for i in node.images if i != ref]
    c.save()


def import_missing(c: ClusterBase, node: NodeState) -> None:
    """Import into ``node`` the recorded images it does not have yet (pause image first)."""
    for ref, layout in c.state.images.items():
        if ref not in node.images:
            import_layout(node.path, Path(layout))
            node.images = sorted({*node.images, ref})
    c.save()


def normalize_ref(ref: str) -> str:
    """The name the CRI gives ``ref``: ``myapp:1`` -> ``docker.io/library/myapp:1``,
    ``me/app`` -> ``docker.io/me/app:latest``; names with a registry host stay as they are.
    containerd finds a pod's image only under this name."""
    repo, tag = split_ref(ref)
    first = repo.split("/")[0]
    if "/" not in repo:
        repo = f"docker.io/library/{repo}"
    elif not ("." in first or ":" in first or first == "localhost"):
        repo = f"docker.io/{repo}"
    return f"{repo}:{tag}"


def start_registry(c: ClusterBase) -> None:
    """Debian's docker-registry on 127.0.0.1 with its storage in the state dir."""
    cfg = registry_config(c.state_dir, c.state.ports["registry"])
    proc = c.started(
        components.start("registry", ["docker-registry", "serve", str(cfg)], c.logs_dir)
    )
    components.wait_until(
        "registry /v2/", lambda: components.http_ok(f"http://{c.registry}/v2/"), 20, proc
    )


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
