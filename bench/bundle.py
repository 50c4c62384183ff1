"""Benchmark the agent bundle against its targets and write the "Bundle" section of
docs/benchmarks.md (only that section; colleagues own the others).

    .venv/bin/python bench/bundle.py [--runs 7]
    .venv/bin/python bench/bundle.py --start-only [--bundle DIR]   # start rows only, printed


Targets (issue 4): size (uncompressed) <= 80 MB; copy into an emptyDir <= 1 s; agent start to
application start <= 150 ms on a fresh start (no checkpoint in the store).

- Copy: `podckpt-agent install --to DIR`, what the init container runs, into a tmpfs
  (emptyDir `medium: Memory`) and into a directory on the root disk (a default emptyDir),
  with the page cache warm and after dropping it (a node that has not read the bundle yet).
- Start: a busybox sandbox (exactly the agent's declared capabilities) whose PID 1 is
  `counter --stamp-exec T0 /.podckpt/bin/podckpt-agent run --store ... -- counter ...`; the
  stamp is taken just before the exec of the agent's launcher, the application stamps its own
  first instruction (COUNTER_STARTED); both CLOCK_MONOTONIC. "cold" drops the page cache before
  each run and uses a freshly installed copy of the bundle; "SCHED_FIFO" runs the same start
  at real-time priority, so that other work on the shared machine cannot preempt it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import report

from podckpt.agent.capabilities import REQUIRED_CAPABILITIES
from podckpt.bundle import MOUNT_PATH, build_bundle
from podckpt.bundle.build import tree_size
from podckpt.bundle.image import build_image
from podckpt.devtools.bundlecheck.roots import COUNTER, busybox_root
from podckpt.devtools.sandbox import Bind, start_sandbox, wait_for

ROOT = Path(__file__).resolve().parent.parent


def time_copy(bundle: Path, dest_parent: Path, cold: bool) -> float:
    dest = dest_parent / "emptydir"
    if dest.exists():
        shutil.rmtree(dest)
    if cold:
        report.drop_caches()
    t = time.monotonic()
    subprocess.run([str(bundle / "bin/podckpt-agent"), "install", "--to", str(dest)], check=True)
    elapsed = time.monotonic() - t
    shutil.rmtree(dest)
    return elapsed


def copy_times(bundle: Path, runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as disk, tempfile.TemporaryDirectory() as t:
        tmpfs = Path(t) / "tmpfs"
        tmpfs.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(tmpfs)], check=True)
        try:
            for name, where in (("tmpfs", tmpfs), ("disk", Path(disk))):
                time_copy(bundle, where, cold=False)  # warm-up
                out[f"{name} warm"] = [time_copy(bundle, where, False) for _ in range(runs)]
                out[f"{name} cold"] = [time_copy(bundle, where, True) for _ in range(runs)]
        finally:
            subprocess.run(["umount", str(tmpfs)], check=True)
    return out


def _read_ns(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def start_once(bundle: Path, root: Path, cold: bool) -> float:
    with tempfile.TemporaryDirectory(prefix="podckpt-bench-") as tmp:
        work = Path(tmp)
        (work / "store").mkdir()
        if cold:
            installed = work / "bundle"
            subprocess.run(
                [str(bundle / "bin/podckpt-agent"), "install", "--to", str(installed)], check=True
            )
            report.drop_caches()
        else:
            installed = bundle
        argv = [
            COUNTER, "--stamp-exec", "/work/t0", f"{MOUNT_PATH}/bin/podckpt-agent", "run",
            "--store", "/work/store/app", "--container", "app", "--", COUNTER, "/work/count",
        ]  # fmt: skip
        box = start_sandbox(
            root,
            argv,
            binds=[Bind(installed, MOUNT_PATH, readonly=True), Bind(work, "/work")],
            env={"COUNTER_STARTED": "/work/t1"},
            capabilities=list(REQUIRED_CAPABILITIES),
        )
        try:
            if not wait_for(lambda: _read_ns(work / "t1") is not None, 20):
                raise RuntimeError(f"application never started: {box.stderr_text()[-2000:]}")
            t0, t1 = _read_ns(work / "t0"), _read_ns(work / "t1")
            assert t0 is not None
            assert t1 is not None
            return (t1 - t0) / 1e9
        finally:
            box.destroy()


def start_times(bundle: Path, runs: int) -> dict[str, list[float]]:
    root = busybox_root()
    start_once(bundle, root, cold=False)  # warm-up
    out = {
        "warm": [start_once(bundle, root, cold=False) for _ in range(runs)],
        "cold": [start_once(bundle, root, cold=True) for _ in range(runs)],
    }
    # The machine is shared: under SCHED_FIFO (inherited by the sandbox, the agent and the
    # application) colleagues' builds cannot preempt the start, which approximates an idle
    # node. The kernel's RT throttling (95%) keeps the rest of the machine alive meanwhile.
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    try:
        out["warm-rt"] = [start_once(bundle, root, cold=False) for _ in range(runs)]
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return out


_FLOOR_CODE = """
import os, subprocess, sys, time
t = time.monotonic()
if sys.argv[1] == "helper":
    subprocess.run(["/.podckpt/bin/podckpt-pidfloor", "300"], check=True, capture_output=True)
else:  # what the agent does in Python: failed posix_spawns, one PID each
    for _ in range(297):
        try:
            os.posix_spawn("/nonexistent/x", ["/x"], {})
        except OSError:
            pass
print(time.monotonic() - t)
"""


def pid_floor_times(bundle: Path, runs: int) -> dict[str, list[float]]:
    """Moving a fresh PID namespace's counter to 300: Python posix_spawn vs the C helper."""
    out: dict[str, list[float]] = {"python": [], "helper": []}
    for _ in range(runs):
        for how, times in out.items():
            box = start_sandbox(
                busybox_root(),
                [f"{MOUNT_PATH}/bin/python3", "-c", _FLOOR_CODE, how],
                binds=[Bind(bundle, MOUNT_PATH, readonly=True)],
                capabilities=list(REQUIRED_CAPABILITIES),
            )
            try:
                box.wait(60)
                times.append(float(box.stdout_text().strip()))
            finally:
                box.destroy()
    return out


def python_start(bundle: Path, runs: int) -> dict[str, list[float]]:
    def once(argv: list[str]) -> float:
        t = time.monotonic()
        subprocess.run(argv, check=True, capture_output=True)
        return time.monotonic() - t

    py, agent = str(bundle / "bin/python3"), str(bundle / "bin/podckpt-agent")
    once([py, "-c", "pass"])
    return {
        "python -c pass": [once([py, "-c", "pass"]) for _ in range(runs)],
        "podckpt-agent --version": [once([agent, "--version"]) for _ in range(runs)],
    }


def fmt(values: list[float], unit: float = 1000.0) -> str:
    med = statistics.median(values) * unit
    return f"{med:.0f} (min {min(values) * unit:.0f}, max {max(values) * unit:.0f})"


def start_only(bundle: Path, runs: int) -> None:
    load_before = os.getloadavg()[0]
    root = busybox_root()
    start_once(bundle, root, cold=False)  # warm-up
    warm = [start_once(bundle, root, cold=False) for _ in range(runs)]
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    try:
        rt = [start_once(bundle, root, cold=False) for _ in range(runs)]
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    pystart = python_start(bundle, runs)
    print(
        f"bundle {bundle.name}, load average {load_before:.1f} before,"
        f" {os.getloadavg()[0]:.1f} after, {runs} runs, ms: median (min, max)"
    )
    print(f"fresh start, warm: {fmt(warm)}")
    print(f"fresh start, warm, SCHED_FIFO: {fmt(rt)}")
    print(f"podckpt-agent --version: {fmt(pystart['podckpt-agent --version'])}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--start-only",
        action="store_true",
        help="measure only the agent start rows and print them (docs/benchmarks.md untouched)",
    )
    parser.add_argument("--bundle", type=Path, help="an already built bundle (default: build)")
    args = parser.parse_args()
    bundle = args.bundle or build_bundle()
    if args.start_only:
        start_only(bundle, args.runs)
        return
    size = tree_size(bundle)
    files = sum(1 for p in bundle.rglob("*") if p.is_file())
    parts = {d: tree_size(bundle / d) for d in ("lib", "libexec", "bin", "criu")}
    stdlib = tree_size(bundle / "lib/python3.13")
    with tempfile.TemporaryDirectory() as tmp:
        build_image(bundle, Path(tmp) / "oci")
        image = sum(p.stat().st_size for p in (Path(tmp) / "oci/blobs").rglob("*") if p.is_file())
    load_before = os.getloadavg()[0]
    copies = copy_times(bundle, args.runs)
    starts = start_times(bundle, args.runs)
    pystart = python_start(bundle, args.runs)
    floors = pid_floor_times(bundle, args.runs)
    load_after = os.getloadavg()[0]

    lines = [
        "## Bundle",
        "",
        f"Machine: {report.machine()}."
        f" Load average {load_before:.1f} before, {load_after:.1f} after"
        " (other work shared the 2 cores). Command: `.venv/bin/python bench/bundle.py"
        f" --runs {args.runs}`. Times in ms: median (min, max) of {args.runs} runs.",
        f"Bundle {bundle.name}.",
        "",
        "| what | measured | target |",
        "|---|---|---|",
        f"| size, uncompressed | {size / 1e6:.1f} MB in {files} files (libraries"
        f" {(parts['lib'] - stdlib) / 1e6:.1f} MB, Python stdlib + agent {stdlib / 1e6:.1f} MB,"
        f" python + criu binaries {parts['libexec'] / 1e6:.1f} MB) | ≤ 80 MB |",
        f"| init-container image (OCI layout, gzip) | {image / 1e6:.1f} MB | |",
    ]
    for key, values in copies.items():
        kind = "tmpfs emptyDir (medium: Memory)" if key.startswith("tmpfs") else "disk emptyDir"
        cache = "page cache warm" if key.endswith("warm") else "page cache dropped"
        lines.append(f"| copy into {kind}, {cache} | {fmt(values)} ms | ≤ 1000 ms |")
    lines += [
        f"| agent start → application start, fresh start, warm | {fmt(starts['warm'])} ms"
        " | ≤ 150 ms |",
        f"| agent start → application start, fresh start, warm, SCHED_FIFO (≈ idle node) |"
        f" {fmt(starts['warm-rt'])} ms | ≤ 150 ms |",
        f"| agent start → application start, fresh copy, page cache dropped (the init container"
        f" has just written the files, so a real pod starts warm) | {fmt(starts['cold'])} ms | |",
        f"| of which: bundled `python3 -c pass` | {fmt(pystart['python -c pass'])} ms | |",
        f"| of which: `podckpt-agent --version` (launcher + Python + agent imports) |"
        f" {fmt(pystart['podckpt-agent --version'])} ms | |",
        f"| PID floor 300 in a fresh namespace: Python posix_spawn x297 (the agent's way) |"
        f" {fmt(floors['python'])} ms | |",
        f"| PID floor 300: `bin/podckpt-pidfloor 300` (vfork in C, incl. its spawn) |"
        f" {fmt(floors['helper'])} ms | |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    report.write_section("bundle", text)


if __name__ == "__main__":
    main()
