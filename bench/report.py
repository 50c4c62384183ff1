"""What every benchmark shares: the machine it ran on, a cold page cache, and its own section
of docs/benchmarks.md (between `<!-- NAME:begin -->` and `<!-- NAME:end -->`), so that each
script rewrites only its figures and the others' stay as measured."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    mem_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, kernel {platform.release()}"


def recycle_memory(mib: int) -> float:
    """Populate `mib` MiB of anonymous memory and free it again; returns the seconds it took.

    These machines are virtual (Firecracker, with free page reporting: a page the guest frees
    goes back to the host, and the next write to it faults on the host as well). How long the
    host takes to give memory back varies with what else it runs: populating 20 GiB took 53 s,
    the same 20 GiB again at once 10.5 s, and 53 s again 30 s later; 1 GiB took 0.27 s right
    after 1.5 GiB had been freed and 0.43 s after 15 s idle. A restore allocates the memory it
    restores, so the same 1 GiB restore took 0.5 s or 1.8-3 s by that chance alone (and was
    faster with the page cache dropped, whose freed pages it reused, than warm). Run right
    before each restore, raw and agent alike, this hands both sides memory the host has just
    backed, as a node that has run for a while has; the seconds it took are reported, so that
    a run where the host was slow shows as one."""
    import mmap  # noqa: PLC0415
    import time  # noqa: PLC0415

    begin = time.monotonic()
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
    region = mmap.mmap(-1, mib << 20, flags=flags)
    region.close()
    return time.monotonic() - begin


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_section(name: str, text: str) -> None:
    """Replace (or append) the section `name`; `text` is the section without its markers."""
    begin, end = markers(name)
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    section = f"{begin}\n{text.strip()}\n{end}"
    if begin in doc and end in doc:
        doc = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _m: section, doc, flags=re.S)
    else:
        doc = doc.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(doc)
