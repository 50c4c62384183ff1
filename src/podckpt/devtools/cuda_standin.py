"""A stand-in NVIDIA driver for the agent's GPU tests (tests/agent/test_gpu*.py) and the
self-test of bench/gpu.py (`--standin`), on machines without a GPU.

`build_library` compiles libcuda_standin.c (beside this file) into `libcuda.so.999.1.2` (+ the
`libcuda.so.1` link), which the sandbox sees at /usr/local/nvidia/lib64, where NVIDIA's
container runtime puts the real one. Each "container" gets a GPU directory of its own
(`StandinGpu`, bound at /dev/nvidia-standin): a new container is a new GPU, whose memory is
empty until the driver's restore fills it from the restored process.

This tests podckpt's sequencing (which calls, in which order, what happens when one fails),
not the feature on a GPU: bench/gpu.py does that on an NVIDIA GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from podckpt.devtools.sandbox import Bind

SOURCE = Path(__file__).resolve().parent / "libcuda_standin.c"
LIBDIR = "/usr/local/nvidia/lib64"
GPU_DIR = "/dev/nvidia-standin"
RELEASE = "999.1.2"
ENV = {"LD_LIBRARY_PATH": LIBDIR}
H200 = "NVIDIA H200"
GIB = 1 << 30
_CALL = re.compile(r"^caller=(\d+) (cu\w+) pid=(\d+)(.*) -> (-?\d+)")


def build_library(out: Path) -> Path:
    """The stand-in driver library in `out` (root-owned, not group/other writable: the agent
    loads only such a library from a path it found in the application's maps)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise FileNotFoundError("gcc not found: the stand-in libcuda cannot be built")
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o755)
    target = out / f"libcuda.so.{RELEASE}"
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", "-Wall", "-pthread", "-Wl,-soname,libcuda.so.1",
         "-o", str(target), str(SOURCE)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    target.chmod(0o755)
    link = out / "libcuda.so.1"
    if not link.is_symlink():
        link.symlink_to(target.name)
    return out


def library_binds(libdir: Path) -> list[Bind]:
    """The driver library alone: a container without a GPU device."""
    return [Bind(libdir, LIBDIR, True)]


def uuid_hex(n: int) -> str:
    return f"{n:032x}"


class StandinGpu:
    """One container's GPU: a directory with its devices, the calls made, failures asked for."""

    def __init__(
        self, path: Path, devices: list[tuple[str, int]], *, cuda_version: int = 13000
    ) -> None:
        """devices: (name, uuid number) per GPU."""
        self.path = path
        path.mkdir(parents=True)
        (path / "devices").write_text(
            "".join(f"{name}|{uuid_hex(uuid)}|{141 * GIB}\n" for name, uuid in devices)
        )
        (path / "driver").write_text(f"{cuda_version}\n")

    def binds(self, libdir: Path) -> list[Bind]:
        return [*library_binds(libdir), Bind(self.path, GPU_DIR)]

    def fail(self, *lines: str) -> None:
        (self.path / "fail").write_text("".join(line + "\n" for line in lines))

    def calls(self, caller: int = 1) -> list[tuple[str, int, str, int]]:
        """(function, pid, details, CUresult) of every checkpoint-API call by `caller` (the
        agent is PID 1 of the sandbox)."""
        log = self.path / "calls.log"
        found = []
        for line in log.read_text().splitlines() if log.exists() else []:
            match = _CALL.match(line)
            if match and int(match[1]) == caller:
                found.append((match[2], int(match[3]), match[4].strip(), int(match[5])))
        return found

    def steps(self, caller: int = 1) -> list[tuple[str, int]]:
        """The agent's state-changing calls: (Lock|Checkpoint|Restore|Unlock, pid)."""
        return [
            (fn.removeprefix("cuCheckpointProcess"), pid)
            for fn, pid, _, _ in self.calls(caller)
            if fn != "cuCheckpointProcessGetState"
        ]

    def memory_files(self) -> list[str]:
        """The GPU memory allocations of the processes (one file each), while on the GPU."""
        return sorted(p.name for p in self.path.glob("mem.*"))

    def clear_calls(self) -> None:
        log = self.path / "calls.log"
        if log.exists():
            os.unlink(log)
