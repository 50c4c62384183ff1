"""Measure podckpt's own memory in a checkpointed container: the agent (PID 1) while it
supervises, and the agent plus CRIU while they dump; write the "Footprint" section of
docs/benchmarks.md. The webhook raises a container's memory limit by
`PODCKPT_AGENT_MEMORY_BYTES` (docs/architecture.md, "Our footprint never gets a pod
evicted"): this is where that figure comes from.

    .venv/bin/python bench/footprint.py [--sizes 100,1024]

The application (tests/agent/apps/memory.py) touches N MiB; the real agent runs it as PID 1 of
a sandbox with CRIU 4.2.1. The processes of the sandbox are polled from the host every 5 ms
during the SIGTERM dump; peak RSS is the kernel's VmHWM of each process (CRIU's helpers
included), summed over podckpt's processes (not the application's).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import report
from agent_checkpoint import start

from podckpt.api.contract import ExitCode
from podckpt.devtools.rootfs import criu_rootfs
from podckpt.devtools.sandbox import wait_for


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _kib(status: dict[str, str], key: str) -> int:
    return int(status.get(key, "0 kB").split()[0])


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                out.append(child)
                todo.append(child)
    return out


def measure(rootfs: Path, mib: int, base: Path) -> dict[str, float]:
    store = Path(tempfile.mkdtemp(prefix="footprint-", dir=base))
    box = start(rootfs, store, mib)
    try:
        assert wait_for(lambda: "count 3" in box.stdout_text(), 120), box.stderr_text()
        agent = box.pid
        app = set(_descendants(agent))
        idle_rss = _kib(_status(agent), "VmRSS")
        peaks: dict[int, int] = {}
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                for pid in [agent, *_descendants(agent)]:
                    if pid in app:
                        continue
                    peaks[pid] = max(peaks.get(pid, 0), _kib(_status(pid), "VmHWM"))
                time.sleep(0.005)

        poller = threading.Thread(target=poll)
        poller.start()
        code = box.stop(120)
        done.set()
        poller.join()
        assert code in (0, ExitCode.CHECKPOINTED), box.stderr_text()
    finally:
        box.destroy()
        shutil.rmtree(store, ignore_errors=True)
    return {
        "idle_mib": idle_rss / 1024,
        "dump_mib": sum(peaks.values()) / 1024,
        "processes": len(peaks),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1024", help="MiB touched by the application")
    args = parser.parse_args()
    rootfs = criu_rootfs()
    base = Path(tempfile.mkdtemp(prefix="podckpt-footprint-", dir="/var/tmp"))
    load = os.getloadavg()[0]
    rows = []
    try:
        for mib in (int(s) for s in args.sizes.split(",")):
            rows.append((mib, measure(rootfs, mib, base)))
            print(mib, rows[-1], flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    out = [
        "## Footprint",
        "",
        f"Machine: {report.machine()}. Load average {load:.1f}. Command: `.venv/bin/python"
        f" bench/footprint.py --sizes {args.sizes}`. The agent from `src/` in the CRIU sandbox;"
        " peak RSS (VmHWM) summed over the agent and every CRIU process during the SIGTERM"
        " dump, polled every 5 ms from the host (the application's own memory excluded).",
        "",
        "| application memory | agent, supervising (RSS) | agent + CRIU, peak during the dump |",
        "|---|---|---|",
    ]
    out += [
        f"| {mib} MiB | {r['idle_mib']:.0f} MiB | {r['dump_mib']:.0f} MiB"
        f" ({r['processes']:.0f} processes) |"
        for mib, r in rows
    ]
    out += [
        "",
        "The webhook raises each checkpointed container's memory limit by"
        " `PODCKPT_AGENT_MEMORY_BYTES` (64 MiB by default) so that this never counts against"
        " the application. CRIU's page images are written through the page cache, which the"
        " kernel charges to the container too but reclaims (writes back) under pressure"
        " rather than killing: a container near its limit dumps more slowly, it is not"
        " OOM-killed by the dump.",
    ]
    report.write_section("footprint", "\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    main()
