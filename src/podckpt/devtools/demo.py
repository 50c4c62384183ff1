"""The README's main job: a counter checkpointed with CRIU and restored in a new container.

    python -m podckpt.devtools.demo [--rounds 2] [--seconds 2]

It builds (once, cached) the CRIU root filesystem, then runs `podckpt-agent run --store ...
-- python3 counter.py` as PID 1 of a container-like sandbox, stops the sandbox as the kubelet
stops a pod (SIGTERM: the agent checkpoints), starts a brand-new sandbox with an empty writable
layer on the same store (the agent restores), and shows the counter carrying on.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from podckpt.devtools.rootfs import criu_rootfs, criu_version
from podckpt.devtools.sandbox import Bind, Sandbox, start_sandbox, wait_for

REPO = Path(__file__).resolve().parents[3]
COUNTER = REPO / "tests" / "agent" / "apps"


def _agent_lines(box: Sandbox) -> list[dict[str, Any]]:
    lines = []
    for line in box.stderr_text().splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


def _counts(box: Sandbox) -> list[int]:
    return [int(n) for n in re.findall(r"^count (\d+)$", box.stdout_text(), re.MULTILINE)]


def _say(text: str) -> None:
    print(text, flush=True)


def _summary(record: dict[str, Any]) -> str:
    criu = record.get("criu") or {}
    parts = [f"{record['phase']}: {record['outcome']}"]
    if "duration_s" in record:
        parts.append(f"{record['duration_s'] * 1000:.0f} ms")
    if "generation" in record:
        parts.append(f"generation {record['generation']}")
    if "frozen_time_us" in criu:
        parts.append(f"app frozen {criu['frozen_time_us'] / 1000:.0f} ms")
    if "pages_written" in criu:
        parts.append(f"{criu['pages_written']} pages written")
    if "pages_restored" in criu:
        parts.append(f"{criu['pages_restored']} pages restored")
    if "since_process_start_s" in record:
        parts.append(f"app started {record['since_process_start_s'] * 1000:.0f} ms after agent")
    if "error" in record:
        parts.append(record["error"])
    return ", ".join(parts)


def run(rounds: int, seconds: float) -> int:
    _say("== building (or reusing) the CRIU root filesystem")
    rootfs = criu_rootfs()
    _say(f"   {rootfs} (CRIU {criu_version(rootfs)})")
    with tempfile.TemporaryDirectory(prefix="podckpt-demo-") as tmp:
        store = Path(tmp)
        argv = [
            "python3", "-m", "podckpt.agent", "run", "--store", "/store/counter",
            "--container", "counter", "--", "python3", "/apps/counter.py", "0.1",
        ]  # fmt: skip
        binds = [
            Bind(REPO / "src", "/opt/podckpt", True),
            Bind(COUNTER, "/apps", True),
            Bind(store, "/store"),
        ]
        previous: int | None = None
        for number in range(1, rounds + 2):
            _say(f"\n== container {number}: a new sandbox (empty writable layer, new PID 1)")
            box = start_sandbox(
                rootfs, argv, binds=binds, env={"PYTHONPATH": "/opt/podckpt"}, hostname="demo"
            )
            try:
                if not wait_for(lambda b=box: len(_counts(b)) >= 3, 30):
                    _say("   the counter did not start:\n" + box.stderr_text())
                    return 1
                time.sleep(seconds)
                seen = _counts(box)
                for record in _agent_lines(box):
                    _say("   agent: " + _summary(record))
                _say(f"   application stdout: count {seen[0]} ... count {seen[-1]}")
                if previous is not None:
                    verdict = "continues" if seen[0] == previous + 1 else "DID NOT continue"
                    _say(f"   => the counter {verdict}: last was {previous}, now {seen[0]}")
                    if seen[0] != previous + 1:
                        return 1
                if number == rounds + 1:
                    break
                _say("== stopping it like the kubelet (SIGTERM): the agent checkpoints")
                code = box.stop(30)
                for record in _agent_lines(box):
                    if record["phase"] in ("dump", "commit", "sigterm"):
                        _say("   agent: " + _summary(record))
                _say(f"   container exit code {code}")
                previous = _counts(box)[-1]
            finally:
                box.destroy()
        latest = (store / "counter" / "LATEST").read_text().strip()
        _say(f"\n== store: LATEST = {latest}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=2, help="container deaths (default 2)")
    parser.add_argument("--seconds", type=float, default=2.0, help="run time per container")
    args = parser.parse_args()
    sys.exit(run(args.rounds, args.seconds))


if __name__ == "__main__":
    main()
