"""Finding, checking and running CRIU.

Two kinds of failure are kept apart, as fastfreeze does: `CriuRunError` when CRIU could not be
executed at all (missing binary, bad loader), and `CriuFailedError` when CRIU ran and said no
(its exit code, its log file, the last error lines of that log).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from podckpt.api import contract

from .errors import CriuFailedError, CriuMissingError, CriuRunError, CriuTooOldError
from .log import Timer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path
    from typing import Any

#: Kernel 6.16+ refuses socket options CRIU < 4.2 reads (CRIU issue #2705); 4.1 cannot dump
#: any process with a TCP socket there. Images are not portable across these versions either.
MIN_VERSION = (4, 2)
CRIU_ENV = contract.Env.CRIU
BUNDLE_ENV = contract.Env.BUNDLE

_VERSION = re.compile(r"^Version:\s*([0-9]+)\.([0-9]+)(?:\.([0-9]+))?", re.MULTILINE)
_STAT_LINE = re.compile(r"^([A-Za-z][A-Za-z ]+?):\s+([0-9]+)(?:\s+(us|\(0x[0-9a-f]+\)))?\s*$")
_ERROR_LINE = re.compile(r"^(?:\([0-9. ]+\)\s+)?(Error|Warn)\b")
_TAIL_LINES = 4


@dataclasses.dataclass(frozen=True)
class Criu:
    """A CRIU binary that answered `--version` with a usable version."""

    path: str
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))


@dataclasses.dataclass(frozen=True)
class CriuResult:
    duration_s: float
    stats: dict[str, int]


def locate(env: Mapping[str, str] | None = None) -> str:
    """`$PODCKPT_CRIU`, else the bundle's `criu/criu`, else `criu` on PATH."""
    env = os.environ if env is None else env
    explicit = env.get(CRIU_ENV)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise CriuMissingError(f"${CRIU_ENV}={explicit} is not an executable file")
        return explicit
    bundle = env.get(BUNDLE_ENV)
    if bundle:
        candidate = os.path.join(bundle, "criu", "criu")
        if os.access(candidate, os.X_OK):
            return candidate
    import shutil  # noqa: PLC0415 - not needed when CRIU comes from the bundle

    found = shutil.which("criu", path=env.get("PATH", os.defpath))
    if found is None:
        raise CriuMissingError(
            "CRIU not found: set $PODCKPT_CRIU, run the agent from its bundle, or put criu"
            " (>= 4.2) on PATH"
        )
    return found


def parse_version(text: str) -> tuple[int, int, int] | None:
    match = _VERSION.search(text)
    if match is None:
        return None
    return (int(match[1]), int(match[2]), int(match[3] or 0))


def bundled_version(path: str, env: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """CRIU's version as the bundle build recorded it (`bundle.json`, `criu_version_output`),
    when `path` is the bundle's own CRIU; None otherwise (then `criu --version` runs)."""
    env = os.environ if env is None else env
    bundle = env.get(BUNDLE_ENV)
    if not bundle or env.get(CRIU_ENV) or path != os.path.join(bundle, "criu", "criu"):
        return None
    try:
        with open(os.path.join(bundle, "bundle.json"), encoding="utf-8") as handle:
            manifest = json.load(handle)
        return parse_version(str(manifest["criu_version_output"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def probe(path: str, env: Mapping[str, str] | None = None) -> Criu:
    """The bundle's recorded version for the bundle's CRIU, else run `criu --version`; refuse a
    CRIU older than MIN_VERSION."""
    version = bundled_version(path, env)
    if version is None:
        version = _run_version(path)
    if version[:2] < MIN_VERSION:
        raise CriuTooOldError(
            f"{path} is CRIU {'.'.join(map(str, version))}; this kernel needs CRIU >="
            f" {'.'.join(map(str, MIN_VERSION))} (older versions fail on any TCP socket)"
        )
    return Criu(path, version)


def _run_version(path: str) -> tuple[int, int, int]:
    import subprocess  # noqa: PLC0415 - a fresh start from the bundle runs no subprocess

    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CriuMissingError(f"cannot run {path} --version: {exc}") from exc
    version = parse_version(done.stdout)
    if done.returncode != 0 or version is None:
        raise CriuMissingError(
            f"{path} --version failed (exit {done.returncode}): "
            + (done.stderr.strip() or done.stdout.strip())[:300]
        )
    return version


def find(env: Mapping[str, str] | None = None) -> Criu:
    return probe(locate(env), env)


def parse_stats(text: str) -> dict[str, int]:
    """CRIU's `--display-stats` table as {"frozen_time_us": 22436, "pages_written": 59, ...}."""
    stats: dict[str, int] = {}
    for line in text.splitlines():
        match = _STAT_LINE.match(line.strip())
        if match is None:
            continue
        name = match[1].lower().replace("memory ", "").replace(" ", "_")
        if match[3] == "us":
            name += "_us"
        stats[name] = int(match[2])
    return stats


def log_tail(log_path: str | Path, count: int = _TAIL_LINES) -> list[str]:
    """The last error (or, failing that, warning) lines of a CRIU log."""
    try:
        with open(log_path, errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    errors = [line.strip() for line in lines if _ERROR_LINE.match(line.strip())]
    hard = [line for line in errors if "Error" in line.split(")", 1)[-1][:8]]
    chosen = hard or errors or lines
    return chosen[-count:]


def run(
    criu: Criu,
    action: str,
    args: Sequence[str],
    log_path: str | Path,
    *,
    pass_fds: Sequence[int] = (),
    timeout: float | None = None,
    preexec: Callable[[], None] | None = None,
    umask: int = -1,
) -> CriuResult:
    """Run `criu ACTION ARGS -o LOG -v4 --display-stats`; raise on failure, return statistics.

    CRIU's stdout/stderr are captured (never the container's): its statistics come from there.
    `preexec` runs in the child before the exec (asuser.preexec: CRIU as the application's user).
    `umask` (a dump's 0o077): what CRIU creates in the store is private from the start.
    """
    argv = [criu.path, action, *args, "-o", str(log_path), "-v4", "--display-stats"]
    timer = Timer()
    if preexec is None and umask == -1 and timeout is None:
        returncode, output = _spawn(argv, action, pass_fds)
        return _result(action, log_path, returncode, output, "", timer=timer)
    import subprocess  # noqa: PLC0415 - not needed before the application starts

    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            pass_fds=tuple(pass_fds),
            timeout=timeout,
            check=False,
            preexec_fn=preexec,
            umask=umask,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise CriuRunError(f"cannot run criu {action}: {exc}") from exc
    return _result(action, log_path, done.returncode, done.stdout, done.stderr, timer=timer)


def _result(
    action: str, log_path: str | Path, returncode: int, stdout: str, stderr: str, *, timer: Timer
) -> CriuResult:
    if returncode != 0:
        tail = (
            log_tail(log_path)
            or [line for line in (stderr + stdout).splitlines() if line.strip()][-_TAIL_LINES:]
        )
        raise CriuFailedError(action, returncode, str(log_path), tail)
    return CriuResult(timer.elapsed(), parse_stats(stdout + "\n" + stderr))


def _spawn(argv: list[str], action: str, pass_fds: Sequence[int]) -> tuple[int, str]:
    """posix_spawn CRIU with stdin /dev/null and stdout+stderr into a memfd; wait for it.

    What a restore runs on the application's critical path: `subprocess` (and the selectors,
    threading and signal machinery it imports) costs ~20 ms to import here, more than this.
    `pass_fds` must be inheritable already (the others are close-on-exec, Python's default)."""
    out = os.memfd_create(f"criu-{action}", os.MFD_CLOEXEC)
    try:
        pid = start(argv, action, pass_fds, output=out)
        try:
            _, status = os.waitpid(pid, 0)
        except OSError as exc:
            raise CriuRunError(f"cannot run criu {action}: {exc}") from exc
        os.lseek(out, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(out, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(out)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def start(argv: list[str], action: str, pass_fds: Sequence[int], *, output: int = -1) -> int:
    """posix_spawn CRIU (stdin /dev/null; stdout and stderr to `output`, else /dev/null) and
    return its PID without waiting: the lazy-pages daemon starts this way, beside the restore.
    `pass_fds` are made inheritable (the others are close-on-exec, Python's default)."""
    for fd in pass_fds:
        os.set_inheritable(fd, True)
    outputs: list[tuple[Any, ...]] = (
        [(os.POSIX_SPAWN_DUP2, output, 1), (os.POSIX_SPAWN_DUP2, output, 2)]
        if output >= 0
        else [(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0), (os.POSIX_SPAWN_DUP2, 1, 2)]
    )
    try:
        return os.posix_spawn(
            argv[0],
            argv,
            os.environ,
            file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0), *outputs],
        )
    except OSError as exc:
        raise CriuRunError(f"cannot run criu {action}: {exc}") from exc


def common_args(*, privileged: bool, options: Sequence[str] = ()) -> list[str]:
    """Options shared by dump and restore, then the workload's own `options` (canonical
    names from podckpt.api.criuopts, already checked against its allowlist).

    `--manage-cgroups=ignore`: the new pod has other cgroups; the restored tree stays in the
    agent's. `--tcp-close`: the pod IP changes, so established connections cannot survive;
    peers see them closed and reconnect, listeners are restored (unless the workload asked
    for `tcp-established`: then `--network-lock nftables`, as the bundle has no iptables).
    `--file-locks`: applications lock their own files (pid files, databases).
    """
    names = {o.partition("=")[0] for o in options}
    args = ["--manage-cgroups=ignore", "--file-locks"]
    if "tcp-established" in names:
        args.append("--network-lock=nftables")
    elif "tcp-close" not in names:
        args.append("--tcp-close")
    if not privileged:
        args.append("--unprivileged")
    args += [f"--{o}" for o in options if o != "file-locks"]
    return args


def dump_args(
    pid: int,
    images: Path,
    *,
    privileged: bool,
    irmap_scan_paths: Sequence[str] = (),
    ghost_limit: int = 64 << 20,
    options: Sequence[str] = (),
    externals: Sequence[str] = (),
) -> list[str]:
    """`--leave-stopped`: the tree stays stopped after the dump so that the agent copies the
    files it holds open at exactly the dumped size, then kills it (SIGTERM) or continues it
    (periodic checkpoint). `externals`: `--external` options of the container's streams
    (stdio.dump_externals)."""
    args = ["-t", str(pid), "-D", str(images), "--leave-stopped"]
    if not any(o.startswith("ghost-limit=") for o in options):
        args.append(f"--ghost-limit={ghost_limit}")
    for path in irmap_scan_paths:
        args.append(f"--irmap-scan-path={path}")
    return args + list(externals) + common_args(privileged=privileged, options=options)


def restore_args(
    images: Path,
    pidfile: Path | None,
    inherit: Mapping[int, str],
    *,
    privileged: bool,
    options: Sequence[str] = (),
) -> list[str]:
    """`-d --restore-sibling`: the restored root becomes the agent's child, so the agent reaps
    it and gets its exit code. `--leave-stopped`: the agent moves the PID counter above the
    application's range before any restored task can fork (see pids.py).
    `--inherit-fd`: the new container's stdout/stderr replace the dumped ones. No `--pidfile`
    by default: the root comes back at its dumped PID, and a pidfile in the store cannot be
    written when the store is full (nor created again after a killed restore)."""
    args = ["-D", str(images), "--restore-detached", "--restore-sibling", "--leave-stopped"]
    if pidfile is not None:
        args += ["--pidfile", str(pidfile)]
    for fd, key in sorted(inherit.items()):
        args.append(f"--inherit-fd=fd[{fd}]:{key}")
    return args + common_args(privileged=privileged, options=options)
