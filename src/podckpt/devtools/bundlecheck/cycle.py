"""One checkpoint/restore cycle of the test application in a sandbox, with the bundle mounted.

Why: the bundle tests, the capability measurement and the benchmark all need the same thing -
start a container-like sandbox on one of the test roots with the bundle at MOUNT_PATH and a
given capability set, dump the application there, then restore it in a *new* sandbox (new PID
namespace, fresh writable layer), as a recreated pod would. `probe_cycle` drives CRIU directly
through probe.py (so it measures CRIU's needs, not the agent's policy); the agent-level tests
use the same sandboxes with the agent as PID 1.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podckpt.bundle.build import MOUNT_PATH
from podckpt.devtools.bundlecheck.roots import COUNTER
from podckpt.devtools.sandbox import Bind, Sandbox, start_sandbox

PROBE = Path(__file__).resolve().parent / "probe.py"
WORK = "/work"  # the bind-mounted scratch directory inside the sandbox (images, count file)

StartSandbox = Callable[..., Sandbox]


@dataclass
class StepResult:
    ok: bool
    detail: dict[str, Any]
    stderr: str


def run_step(
    bundle: Path,
    root: Path,
    argv: Sequence[str],
    work: Path,
    *,
    capabilities: Iterable[str] | None,
    seccomp: bool = False,
    start: StartSandbox = start_sandbox,
    timeout: float = 60,
) -> StepResult:
    """Run argv (a probe step) as PID 1 of a sandbox and return its JSON verdict."""
    binds = [
        Bind(bundle, MOUNT_PATH, readonly=True),
        Bind(PROBE, "/probe.py", readonly=True),
        Bind(work, WORK),
    ]
    box = start(root, list(argv), binds=binds, capabilities=capabilities, seccomp=seccomp)
    try:
        box.wait(timeout)
        out = box.stdout_text().strip().splitlines()
        try:
            detail = json.loads(out[-1]) if out else {}
        except json.JSONDecodeError:
            detail = {"ok": False, "stdout": out[-5:]}
        return StepResult(bool(detail.get("ok")), detail, box.stderr_text())
    finally:
        box.destroy()


def probe_cycle(
    bundle: Path,
    root: Path,
    *,
    capabilities: Iterable[str] | None,
    criu_args: Sequence[str] = ("--unprivileged",),
    seccomp: bool = False,
    start: StartSandbox = start_sandbox,
    work: Path | None = None,
    app: Sequence[str] | None = None,
    peer: bool = False,
) -> tuple[StepResult, StepResult | None]:
    """Dump the counter in one sandbox, restore it in a fresh one; (dump, restore or None)."""
    caps = list(capabilities) if capabilities is not None else None
    with tempfile.TemporaryDirectory(prefix="podckpt-cycle-") as tmp:
        w = work or Path(tmp)
        w.chmod(0o755)
        py = f"{MOUNT_PATH}/bin/python3"
        common = ["--images", f"{WORK}/img", "--count", f"{WORK}/count"]
        common += [f"--criu-arg={a}" for a in criu_args]
        argv = list(app) if app is not None else [COUNTER, f"{WORK}/count"]
        peer_arg = ["--peer"] if peer else []
        d = run_step(bundle, root, [py, "/probe.py", "dump", *common, *peer_arg, "--", *argv], w,
                     capabilities=caps, seccomp=seccomp, start=start)  # fmt: skip
        if not d.ok:
            return d, None
        r = run_step(bundle, root, [py, "/probe.py", "restore", *common], w,
                     capabilities=caps, seccomp=seccomp, start=start)  # fmt: skip
        return d, r
