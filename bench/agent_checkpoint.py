"""The agent against raw CRIU, side by side; writes the "Agent" section of docs/benchmarks.md.

    /work/coord/heavy .venv/bin/python bench/agent_checkpoint.py [--runs 3] [--sizes 256,1024]
        [--lazy-mib 256,1024,2048] [--no-write]

Everything runs in the CRIU sandbox (CRIU 4.2.1 from the CRIU root filesystem, privileged CRIU
mode) with the agent from `src/` as PID 1, precompiled and with what it takes from its bundle
in a pod (the C PID floor helper, CRIU's recorded version: `fake_bundle`), and the store on an
ext4 of its own (a loop device with direct I/O on the root disk; `--store-fs root` for the
shared root filesystem). The programs inside the sandbox are bench/in_sandbox.py. For each
size and run:

- checkpoint: an application that touched N MiB (`memtick`) runs under the agent. First a raw
  `criu dump` of that same process with the agent's own options plus one `syncfs` of the
  store's filesystem (the tree is continued afterwards); then SIGTERM to the agent, timed from
  outside until the sandbox's PID 1 has exited (dump, checksums, durable commit, tree killed);
- restore, page cache warm and then dropped: raw `criu restore` of that generation with the
  agent's own options (CRIU's wall time; the tree runs when CRIU exits), then the agent on a
  copy of the same generation, from its exec (`stamp`) to its `restore ok` line (the tree
  continued, after verification, files, PID floor);
- lazy (`--lazy-mib` sizes): the agent with `restore-mode: lazy`: exec to the restored
  application's first output line, and exec to the agent's `lazy-pages ok` line (the last page
  in), beside the agent's full restore of the same generation.

Before every dump and restore, of either side, memory is populated and freed once
(`report.recycle_memory`): on these virtual machines memory the host has not just backed is
about 2 s/GiB slower to fill, by chance, and was the largest difference between two runs.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import report

from podckpt.agent import images
from podckpt.agent.exitcodes import CHECKPOINTED
from podckpt.api import format_downward_text
from podckpt.devtools.rootfs import criu_rootfs, criu_version
from podckpt.devtools.sandbox import Bind, Sandbox, start_sandbox, wait_for

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
HELPER = "/bench/in_sandbox.py"
TICK_S = 0.005


def agent_lines(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        if line.startswith("{") and '"agent":"podckpt"' in line:
            found.append(json.loads(line))
    return found


def phase(box: Sandbox, name: str, outcome: str = "ok") -> dict[str, Any] | None:
    for record in agent_lines(box.stderr_text()):
        if record.get("phase") == name and record.get("outcome") == outcome:
            return record
    return None


def epoch(ts: str) -> float:
    """The agent's `ts` (UTC, milliseconds) as a Unix time."""
    whole, _, millis = ts.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(millis or 0) / 1000


def stamp_of(box: Sandbox) -> float:
    for line in box.stderr_text().splitlines():
        if line.startswith("stamp "):
            return float(line.split()[1])
    raise RuntimeError("no stamp line")


def ticks(box: Sandbox) -> list[float]:
    out = []
    for line in box.stdout_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "tick":
            out.append(float(parts[2]))
    return out


@contextlib.contextmanager
def store_filesystem(kind: str, gib: int) -> Iterator[Path]:
    """Where stores live. `loop`: a fresh ext4 of its own on a loop device with direct I/O,
    backed by a file on the root disk, so that `syncfs` and the journal's flushes see only the
    benchmark's writes (other work on this shared machine writes to the root filesystem);
    `root`: the root filesystem itself."""
    if kind == "root":
        base = Path(tempfile.mkdtemp(prefix="podckpt-bench-", dir="/var/tmp"))
        try:
            yield base
        finally:
            shutil.rmtree(base, ignore_errors=True)
        return
    work = Path(tempfile.mkdtemp(prefix="podckpt-bench-", dir="/var/tmp"))
    image, mnt = work / "store.img", work / "mnt"
    mnt.mkdir()
    with image.open("wb") as f:
        f.truncate(gib << 30)
    dev = subprocess.run(
        ["losetup", "--direct-io=on", "--find", "--show", str(image)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    try:
        subprocess.run(
            ["mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev],
            check=True,
        )
        subprocess.run(["mount", dev, str(mnt)], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
        shutil.rmtree(work, ignore_errors=True)


def image_mib(generation: Path) -> float:
    """MiB of a generation's page images: about what its restore allocates."""
    return sum(p.stat().st_size for p in (generation / "images").glob("pages-*.img")) / 2**20


def fake_bundle(base: Path, rootfs: Path) -> Path:
    """What the agent takes from its bundle in a pod, beside the agent from `src/`: the C PID
    floor helper (launcher.c) and CRIU's version recorded at build time (`bundle.json`), so
    that a start runs no `criu --version` (docs/agent.md); CRIU itself is the root
    filesystem's, through `criu/criu`."""
    bundle = base / "bundle"
    (bundle / "bin").mkdir(parents=True)
    (bundle / "criu").mkdir()
    launcher = ROOT / "src" / "podckpt" / "bundle" / "launcher.c"
    subprocess.run(
        ["gcc", "-static", "-Os", "-s", "-o", str(bundle / "bin" / "podckpt-pidfloor"),
         str(launcher)],
        check=True,
    )  # fmt: skip
    (bundle / "criu" / "criu").symlink_to("/usr/sbin/criu")
    version = criu_version(rootfs)
    (bundle / "bundle.json").write_text(
        json.dumps({"criu_version_output": f"Version: {version}\n"}) + "\n"
    )
    return bundle


class Bench:
    def __init__(self, rootfs: Path, base: Path) -> None:
        self.rootfs = rootfs
        self.base = base
        #: Seconds per GiB of each `recycle` (report.recycle_memory): how slow the host was.
        self.recycled: list[float] = []
        self.podinfo = base / "podinfo"
        self.podinfo.mkdir()
        (self.podinfo / "labels").write_text("")
        (self.podinfo / "annotations").write_text("")
        self.bundle = fake_bundle(base, rootfs)
        self.precompile()

    def sandbox(self, store: Path, argv: list[str], *, writable_src: bool = False) -> Sandbox:
        return start_sandbox(
            self.rootfs,
            argv,
            binds=[
                Bind(ROOT / "src", "/opt/podckpt", not writable_src),
                Bind(BENCH, "/bench", True),
                Bind(store, "/store"),
                Bind(self.podinfo, "/etc/podinfo", True),
                Bind(self.bundle, "/.podckpt", True),
            ],
            env={"PYTHONPATH": "/opt/podckpt", "PODCKPT_BUNDLE": "/.podckpt"},
        )

    def recycle(self, mib: float) -> None:
        """Before every dump and restore, raw and agent alike (report.recycle_memory): the
        page cache a dump fills and the memory a restore allocates are memory the host has
        just backed, not a chance between fast and about 2 s/GiB slower."""
        mib = max(64, int(mib * 1.25))
        self.recycled.append(report.recycle_memory(mib) / (mib / 1024))

    def precompile(self) -> None:
        """The agent's modules compiled by the sandbox's Python once, as the bundle ships
        them: a start then compiles nothing."""
        argv = ["python3", "-m", "compileall", "-q", "/opt/podckpt/podckpt"]
        box = self.sandbox(self.base, argv, writable_src=True)
        try:
            assert wait_for(lambda: not box.alive(), 300), box.stderr_text()
        finally:
            box.destroy()

    def agent(self, store: Path, mib: int, *, annotations: dict[str, str] | None = None) -> Sandbox:
        (self.podinfo / "annotations").write_text(format_downward_text(annotations or {}))
        argv = [
            "python3", HELPER, "stamp",
            # -S: no site-packages, as the bundle's launcher runs it (python -I -S)
            "python3", "-S", "-m", "podckpt.agent", "run", "--store", "/store/app",
            "--container", "app", "--annotations-file", "/etc/podinfo/annotations",
            "--", "python3", HELPER, "memtick", str(mib), str(TICK_S),
        ]  # fmt: skip
        return self.sandbox(store, argv)

    # -- checkpoint --------------------------------------------------------------------------

    def checkpoint(self, mib: int) -> tuple[dict[str, float], Path]:
        store = Path(tempfile.mkdtemp(prefix="store-", dir=self.base))
        box = self.agent(store, mib)
        try:
            assert wait_for(lambda: len(ticks(box)) >= 3, 300), box.stderr_text()
            started = phase(box, "fresh-start")
            assert started is not None, box.stderr_text()
            self.recycle(mib)
            raw = box.exec(
                ["python3", HELPER, "dump", str(started["pid"]), "/store/raw/images", "/store"],
                timeout=600,
            )
            assert raw.returncode == 0, raw.stderr.decode()
            raw_result = json.loads(raw.stdout.decode().strip().splitlines()[-1])
            assert raw_result["rc"] == 0, raw_result
            shutil.rmtree(store / "raw")
            seen = len(ticks(box))
            assert wait_for(lambda: len(ticks(box)) > seen + 3, 60), "the app did not run on"
            self.recycle(mib)
            t0 = time.monotonic()
            code = box.stop(300)
            stop_s = time.monotonic() - t0
            assert code == CHECKPOINTED, box.stderr_text()
            dump, commit = phase(box, "dump"), phase(box, "commit")
            whole = phase(box, "sigterm", "checkpointed")
            assert dump is not None, box.stderr_text()
            assert commit is not None, box.stderr_text()
        finally:
            box.destroy()
        generation = (store / "app" / "LATEST").read_text().strip()
        result = {
            "raw_dump_s": raw_result["criu_s"],
            "raw_syncfs_s": raw_result["syncfs_s"],
            "raw_total_s": raw_result["criu_s"] + raw_result["syncfs_s"],
            "agent_dump_s": dump["duration_s"],
            "agent_commit_s": commit["duration_s"],
            # SIGTERM → checkpointed: checks, CRIU, hashing left, files, commit
            "agent_checkpoint_s": whole["duration_s"] if whole else float("nan"),
            "sigterm_to_exit_s": stop_s,
            "image_mib": commit["bytes"] / 2**20,
        }
        result["ratio"] = result["sigterm_to_exit_s"] / result["raw_total_s"]
        pristine = self.base / f"pristine-{mib}"
        shutil.rmtree(pristine, ignore_errors=True)
        shutil.copytree(store / "app" / "generations" / generation, pristine)
        shutil.rmtree(store)
        result.update(self.hash_speed(pristine))
        return result, pristine

    def hash_speed(self, pristine: Path) -> dict[str, float]:
        """How long the agent's Python digests the page image, three ways (in_sandbox.py)."""
        pages = max((pristine / "images").glob("pages-*.img"), key=lambda p: p.stat().st_size)
        argv = ["python3", HELPER, "hashspeed", f"/store/{pristine.name}/images/{pages.name}"]
        box = self.sandbox(pristine.parent, argv)
        try:
            assert wait_for(lambda: not box.alive(), 300), box.stderr_text()
            record = json.loads(box.stdout_text().strip().splitlines()[-1])
        finally:
            box.destroy()
        return {f"hash_{k}": float(v) for k, v in record.items()}

    # -- restore -----------------------------------------------------------------------------

    def raw_restore(self, pristine: Path, *, cold: bool) -> float:
        os.sync()
        if cold:
            report.drop_caches()
        self.recycle(image_mib(pristine))
        argv = ["python3", HELPER, "restore", f"/store/{pristine.name}"]
        box = self.sandbox(pristine.parent, argv)
        try:
            assert wait_for(lambda: '"raw": "restore"' in box.stderr_text(), 300), box.stderr_text()
            line = next(x for x in box.stderr_text().splitlines() if '"raw": "restore"' in x)
            record = json.loads(line)
            assert record["rc"] == 0, box.stderr_text()
            end = record["end"]
            assert wait_for(lambda: any(t > end for t in ticks(box)), 60), "raw: no tick"
        finally:
            box.destroy()
        return float(record["criu_s"])

    def agent_restore(
        self, pristine: Path, mib: int, *, cold: bool, lazy: bool = False
    ) -> dict[str, float]:
        """`restore-mode` explicit either way: without it, a large generation restores lazily
        where the container allows it (the sandbox does)."""
        mode = "lazy" if lazy else "full"
        annotations = {"memverge.ai/restore-mode": mode}
        store = Path(tempfile.mkdtemp(prefix="store-", dir=self.base))
        gens = store / "app" / "generations"
        gens.mkdir(parents=True)
        name = json.loads((pristine / "manifest.json").read_text())["generation"]
        shutil.copytree(pristine, gens / name)
        (store / "app" / "LATEST").write_text(name + "\n")
        (store / "app" / "store.json").write_text('{"layout": 1, "container": "app"}\n')
        os.sync()
        if cold:
            report.drop_caches()
        self.recycle(image_mib(pristine))
        box = self.agent(store, mib, annotations=annotations)
        try:
            assert wait_for(lambda: phase(box, "restore") is not None, 300), box.stderr_text()
            if lazy:
                assert wait_for(lambda: phase(box, "lazy-pages") is not None, 300), (
                    box.stderr_text()
                )
            restored = phase(box, "restore")
            assert restored is not None
            begin = stamp_of(box)
            running = epoch(restored["ts"])
            assert wait_for(lambda: any(t > running - 0.05 for t in ticks(box)), 60), "no tick"
            first_tick = min(t for t in ticks(box) if t > begin)
            result = {
                "start_to_running_s": running - begin,
                "start_to_tick_s": first_tick - begin,
                "criu_s": float(restored.get("criu_s", 0.0)),
                "before_criu_s": float(restored.get("before_criu_s", 0.0)),
                "daemon_wait_s": float(restored.get("lazy_daemon_wait_s") or 0.0),
                "retried": float(bool(restored.get("lazy_restore_retried"))),
            }
            if lazy:
                done = phase(box, "lazy-pages")
                assert done is not None
                result["start_to_all_pages_s"] = epoch(done["ts"]) - begin
        finally:
            box.destroy()
            shutil.rmtree(store, ignore_errors=True)
        return result

    def restores(self, pristine: Path, mib: int) -> dict[str, float]:
        result: dict[str, float] = {}
        for label, cold in (("warm", False), ("cold", True)):
            raw = self.raw_restore(pristine, cold=cold)
            agent = self.agent_restore(pristine, mib, cold=cold)
            result[f"raw_restore_{label}_s"] = raw
            result[f"agent_restore_{label}_s"] = agent["start_to_running_s"]
            result[f"agent_criu_{label}_s"] = agent["criu_s"]
            result[f"ratio_{label}"] = agent["start_to_running_s"] / raw
        return result


def fmt(values: list[float], unit: float = 1000.0, digits: int = 0) -> str:
    med = statistics.median(values) * unit
    return (
        f"{med:.{digits}f} (min {min(values) * unit:.{digits}f},"
        f" max {max(values) * unit:.{digits}f})"
    )


def ratio(values: list[float]) -> str:
    return f"**{statistics.median(values):.2f}x** ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="256,1024", help="MiB touched by the application")
    parser.add_argument(
        "--lazy-mib", default="256,1024,2048", help="sizes of the lazy runs; 0: none"
    )
    parser.add_argument("--store-fs", choices=("loop", "root"), default="loop")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rootfs = criu_rootfs()
    load_before = os.getloadavg()
    rows: list[tuple[int, list[dict[str, float]]]] = []
    lazy_sizes = [int(x) for x in args.lazy_mib.split(",") if int(x)]
    lazy_rows: list[tuple[int, list[dict[str, float]]]] = []
    biggest = max([int(s) for s in args.sizes.split(",")] + lazy_sizes)
    with store_filesystem(args.store_fs, 4 + 5 * biggest // 1024) as base:
        bench = Bench(rootfs, base)
        for mib in (int(s) for s in args.sizes.split(",")):
            runs = []
            for _ in range(args.runs):
                result, pristine = bench.checkpoint(mib)
                result.update(bench.restores(pristine, mib))
                shutil.rmtree(pristine)
                print(mib, json.dumps(result), flush=True)
                runs.append(result)
            rows.append((mib, runs))
        for lazy_mib in lazy_sizes:
            lazy_runs: list[dict[str, float]] = []
            for _ in range(args.runs):
                _, pristine = bench.checkpoint(lazy_mib)
                while not images.has_lazy_pages(pristine / "images"):
                    # CRIU marked nothing lazy (images.py): it would restore in full.
                    shutil.rmtree(pristine)
                    _, pristine = bench.checkpoint(lazy_mib)
                bench.raw_restore(pristine, cold=False)  # page cache warm for both
                full = bench.agent_restore(pristine, lazy_mib, cold=False)
                raw = bench.raw_restore(pristine, cold=False)
                lazy = bench.agent_restore(pristine, lazy_mib, cold=False, lazy=True)
                shutil.rmtree(pristine)
                run = {
                    "raw_s": raw,
                    "full_s": full["start_to_running_s"],
                    "full_tick_s": full["start_to_tick_s"],
                    "lazy_running_s": lazy["start_to_running_s"],
                    "lazy_tick_s": lazy["start_to_tick_s"],
                    "lazy_all_s": lazy["start_to_all_pages_s"],
                    "lazy_before_criu_s": lazy["before_criu_s"],
                    "lazy_criu_s": lazy["criu_s"],
                    "lazy_daemon_wait_s": lazy["daemon_wait_s"],
                    "lazy_retried": lazy["retried"],
                }
                run["all_vs_full"] = run["lazy_all_s"] / run["full_s"]
                print("lazy", lazy_mib, json.dumps(run), flush=True)
                lazy_runs.append(run)
            lazy_rows.append((lazy_mib, lazy_runs))
    load_after = os.getloadavg()
    command = (
        f"/work/coord/heavy .venv/bin/python bench/agent_checkpoint.py --runs {args.runs}"
        f" --sizes {args.sizes} --lazy-mib {args.lazy_mib} --store-fs {args.store_fs}"
    )
    where = {
        "loop": "the store on an ext4 of its own (loop device with direct I/O on the root disk,"
        " so that syncfs and fsync see only the benchmark's writes)",
        "root": "the store on the root filesystem (ext4, shared with other work)",
    }[args.store_fs]
    out = [
        "## Agent",
        "",
        f"Machine: {report.machine()}. Load average (1, 5, 15 min) "
        + ", ".join(f"{x:.1f}" for x in load_before)
        + " before, "
        + ", ".join(f"{x:.1f}" for x in load_after)
        + f" after. CRIU {criu_version(rootfs)}, privileged CRIU mode, {where},"
        " the agent from `src/` as PID 1 of the CRIU sandbox, the same process and"
        f" generation for the agent and raw CRIU. Command: `{command}` (bench/agent_checkpoint.py"
        " says what is measured). Times in ms: median (min, max) of"
        f" {args.runs} runs; ratios: median (min-max) of the per-run ratios. Before every"
        " dump and restore, raw and agent alike, 1.25x its memory was populated and freed"
        " (`report.recycle_memory`: on these virtual machines memory the host has not just"
        " backed costs about 2 s/GiB more, by chance): "
        f"{statistics.median(bench.recycled):.2f} s/GiB median"
        f" ({min(bench.recycled):.2f}-{max(bench.recycled):.2f}) in this run.",
        "",
        "**Checkpoint.** Raw: `criu dump` with the agent's options + one `syncfs`. Agent:"
        " SIGTERM → PID 1 exited (dump, checksums, durable commit, tree killed). Target ≤ 1.15x.",
        "",
        "| touched memory | image | raw dump | raw syncfs | agent: CRIU dump | agent: commit |"
        " agent: whole checkpoint | agent: SIGTERM → exit | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mib, runs in rows:

        def col(key: str, runs: list[dict[str, float]] = runs) -> list[float]:
            return [r[key] for r in runs]

        out.append(
            f"| {mib} MiB | {statistics.median(col('image_mib')):.0f} MiB"
            f" | {fmt(col('raw_dump_s'))} | {fmt(col('raw_syncfs_s'))}"
            f" | {fmt(col('agent_dump_s'))} | {fmt(col('agent_commit_s'))}"
            f" | {fmt(col('agent_checkpoint_s'))}"
            f" | {fmt(col('sigterm_to_exit_s'))} | {ratio(col('ratio'))} |"
        )
    out += [
        "",
        "**Digest of the page image** (the same generation, page cache warm, the agent's"
        " Python in the sandbox): SHA-256 in one stream, SHA-256 in 16 MiB chunks on the"
        " agent's threads (what the agent does, `integrity.PageVerifier`), and zlib's CRC32,"
        ' the cheaper digest not chosen (docs/agent.md "One pass over the bytes").',
        "",
        "| page image | SHA-256, one stream | SHA-256 chunks, threads | CRC32, one stream |",
        "|---|---|---|---|",
    ]
    for _, runs in rows:
        threads = int(statistics.median(r["hash_threads"] for r in runs))
        out.append(
            f"| {statistics.median(r['hash_bytes'] for r in runs) / 2**20:.0f} MiB"
            f" | {fmt([r['hash_sha256_s'] for r in runs])}"
            f" | {fmt([r['hash_sha256_chunks_s'] for r in runs])} ({threads} threads)"
            f" | {fmt([r['hash_crc32_s'] for r in runs])} |"
        )
    out += [
        "",
        "**Restore.** Raw: `criu restore` with the agent's options, CRIU's wall time (the tree"
        " runs when CRIU exits). Agent: its exec → its `restore ok` line (Python start, store,"
        " verification, files, CRIU, PID floor, tree continued). Target ≤ 1.10x.",
        "",
        "| touched memory | cache | raw `criu restore` | agent: start → running |"
        " agent: CRIU part | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for mib, runs in rows:
        for label, name in (("warm", "warm"), ("cold", "dropped")):

            def col2(key: str, runs: list[dict[str, float]] = runs) -> list[float]:
                return [r[key] for r in runs]

            out.append(
                f"| {mib} MiB | {name} | {fmt(col2(f'raw_restore_{label}_s'))}"
                f" | {fmt(col2(f'agent_restore_{label}_s'))}"
                f" | {fmt(col2(f'agent_criu_{label}_s'))} | {ratio(col2(f'ratio_{label}'))} |"
            )
    if lazy_rows:
        out += [
            "",
            "**Lazy restore**, page cache warm, `restore-mode: lazy`, beside the agent's full"
            " restore of the same generation. Targets (2 GiB): application answering ≤ 200 ms"
            " after the agent starts; all pages in ≤ 1.2x the full restore.",
            "",
            "| touched memory | raw `criu restore` | agent full: start → running |"
            " lazy: start → running | lazy: start → first output | lazy: start → last page in"
            " | last page / full |",
            "|---|---|---|---|---|---|---|",
        ]
        for lazy_mib, runs in lazy_rows:
            out.append(
                f"| {lazy_mib} MiB | {fmt([r['raw_s'] for r in runs])}"
                f" | {fmt([r['full_s'] for r in runs])}"
                f" | {fmt([r['lazy_running_s'] for r in runs])}"
                f" | {fmt([r['lazy_tick_s'] for r in runs])}"
                f" | {fmt([r['lazy_all_s'] for r in runs])}"
                f" | {ratio([r['all_vs_full'] for r in runs])} |"
            )
    text = "\n".join(out)
    print(text)
    if not args.no_write:
        report.write_section("agent", text)


if __name__ == "__main__":
    main()
