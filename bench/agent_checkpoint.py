"""Benchmark the agent's checkpoint and restore and write the "Agent" section of
docs/benchmarks.md (only that section; colleagues own the others).

    .venv/bin/python bench/agent_checkpoint.py [--runs 3] [--sizes 100,1024]

For each size, an application that touched that many MiB (tests/agent/apps/memory.py) runs
under `podckpt-agent run` as PID 1 of a sandbox (the real agent, CRIU 4.2.1 from the CRIU root
filesystem), with the store on the root disk (ext4). Per run:
- SIGTERM → dump: CRIU's dump time and the application's frozen time (CRIU statistics), the
  commit (checksums + fsync + manifest + LATEST), and SIGTERM to agent exit as the kubelet sees it;
- a new sandbox → restore: the agent's restore phase (verify checksums, put files back, CRIU
  restore, PID floor) and CRIU's own part; then the page cache is dropped and it is repeated
  ("cold": a node that has never read the images).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import report

from podckpt.devtools.rootfs import criu_rootfs, criu_version
from podckpt.devtools.sandbox import Bind, Sandbox, start_sandbox, wait_for

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "agent" / "apps"


def lines(box: Sandbox, phase: str, outcome: str = "ok") -> list[dict[str, Any]]:
    found = []
    for line in box.stderr_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("phase") == phase and record.get("outcome") == outcome:
                found.append(record)
    return found


def start(rootfs: Path, store: Path, mib: int) -> Sandbox:
    argv = [
        "python3", "-m", "podckpt.agent", "run", "--store", "/store/app", "--container", "app",
        "--", "python3", "/apps/memory.py", str(mib),
    ]  # fmt: skip
    return start_sandbox(
        rootfs,
        argv,
        binds=[
            Bind(ROOT / "src", "/opt/podckpt", True),
            Bind(APPS, "/apps", True),
            Bind(store, "/store"),
        ],
        env={"PYTHONPATH": "/opt/podckpt"},
    )


def one_run(rootfs: Path, mib: int, base: Path) -> dict[str, float]:
    store = Path(tempfile.mkdtemp(prefix="bench-store-", dir=base))
    try:
        box = start(rootfs, store, mib)
        try:
            assert wait_for(lambda: "count 3" in box.stdout_text(), 120), box.stderr_text()
            t0 = time.monotonic()
            code = box.stop(120)
            stop_s = time.monotonic() - t0
            assert code == 0, box.stderr_text()
            dump = lines(box, "dump")[0]
            commit = lines(box, "commit")[0]
        finally:
            box.destroy()
        generation = (store / "app" / "LATEST").read_text().strip()
        result = {
            "dump_s": dump["duration_s"],
            "frozen_s": dump["criu"]["frozen_time_us"] / 1e6,
            "commit_s": commit["duration_s"],
            "sigterm_to_exit_s": stop_s,
            "image_mib": commit["bytes"] / 2**20,
        }
        for label in ("warm", "cold"):
            # Restore the same generation twice: put it back as restorable each time.
            gen_dir = store / "app" / "generations" / generation
            saved = store / f"saved-{label}"
            if label == "warm":
                shutil.copytree(gen_dir, saved)
            else:
                shutil.rmtree(gen_dir, ignore_errors=True)
                shutil.copytree(store / "saved-warm", gen_dir)
                (store / "app" / "LATEST").write_text(generation + "\n")
                report.drop_caches()
            box = start(rootfs, store, mib)
            try:
                assert wait_for(lambda b=box: lines(b, "restore"), 120), box.stderr_text()
                restore = lines(box, "restore")[0]
            finally:
                box.destroy()
            result[f"restore_{label}_s"] = restore["duration_s"]
            result[f"criu_restore_{label}_s"] = restore["criu_s"]
        return result
    finally:
        shutil.rmtree(store, ignore_errors=True)


def fmt(values: list[float], unit: float = 1000.0) -> str:
    med = statistics.median(values) * unit
    return f"{med:.0f} (min {min(values) * unit:.0f}, max {max(values) * unit:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="100,1024", help="MiB touched by the application")
    args = parser.parse_args()
    rootfs = criu_rootfs()
    base = Path(tempfile.mkdtemp(prefix="podckpt-bench-", dir="/var/tmp"))
    load_before = os.getloadavg()[0]
    rows = []
    try:
        for mib in (int(s) for s in args.sizes.split(",")):
            runs = [one_run(rootfs, mib, base) for _ in range(args.runs)]
            print(mib, runs, flush=True)
            rows.append((mib, runs))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    load_after = os.getloadavg()[0]
    out = [
        "## Agent",
        "",
        f"Machine: {report.machine()}."
        f" Load average {load_before:.1f} before, {load_after:.1f} after."
        f" CRIU {criu_version(rootfs)}, store on ext4 (root disk), the agent from `src/` in the"
        " CRIU sandbox (privileged CRIU mode). Command: `.venv/bin/python"
        f" bench/agent_checkpoint.py --runs {args.runs} --sizes {args.sizes}`."
        " Times in ms: median (min, max) of"
        f" {args.runs} runs.",
        "",
        "| touched memory | image | CRIU dump | app frozen | commit (sha256 + fsync) |"
        " SIGTERM → agent exit | restore, warm (CRIU part) | restore, cache dropped (CRIU part) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mib, runs in rows:

        def col(key: str, runs: list[dict[str, float]] = runs) -> list[float]:
            return [r[key] for r in runs]

        out.append(
            f"| {mib} MiB | {statistics.median(col('image_mib')):.0f} MiB"
            f" | {fmt(col('dump_s'))} | {fmt(col('frozen_s'))} | {fmt(col('commit_s'))}"
            f" | {fmt(col('sigterm_to_exit_s'))}"
            f" | {fmt(col('restore_warm_s'))} ({fmt(col('criu_restore_warm_s'))})"
            f" | {fmt(col('restore_cold_s'))} ({fmt(col('criu_restore_cold_s'))}) |"
        )
    out += [
        "",
        "The application stays frozen from CRIU's freeze until the end of the dump; on SIGTERM"
        " the agent keeps it stopped until the commit is durable (so that a failed commit can"
        " still hand it SIGTERM), which is why SIGTERM → exit includes the commit. A restore"
        " verifies every checksum before CRIU runs: about half of a warm restore is sha256.",
    ]
    report.write_section("agent", "\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    main()
