"""The parts of the agent's GPU support that need no driver: what /proc says about a tree
(which processes map libcuda, MPS and multi-process NCCL refused), the manifest's `gpu`
entry checked before a restore, which library paths may be loaded, names and settings.

The sequencing with a driver is tested in tests/agent/test_gpu_driver.py (stand-in driver on
live processes) and tests/agent/test_gpu.py (with CRIU)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from podckpt.agent import cuda, gpu, gpurestore
from podckpt.agent.errors import GenerationInvalidError, GpuError, UnsupportedProcessError

_MAPPER = """\
import mmap, sys, time
held = []
for path in sys.argv[1:]:
    f = open(path, "rb")
    held.append((f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)))
print("mapped", flush=True)
time.sleep(120)
"""


@pytest.fixture
def mapper(tmp_path: Path) -> Iterator[Callable[..., int]]:
    """Start processes that map files with the driver's and NCCL's names."""
    started: list[subprocess.Popen[str]] = []

    def start(*names: str, env: dict[str, str] | None = None) -> int:
        paths = []
        for name in names:
            path = tmp_path / name
            path.write_bytes(b"\0" * 4096)
            paths.append(str(path))
        proc = subprocess.Popen(
            [sys.executable, "-c", _MAPPER, *paths],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        started.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "mapped"
        return proc.pid

    yield start
    for proc in started:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_scan_finds_the_processes_that_map_libcuda(
    mapper: Callable[..., int], tmp_path: Path
) -> None:
    plain = mapper()
    user = mapper("libcuda.so.580.159.04")
    found = gpu.scan([plain, user])
    assert found is not None
    assert found.pids == [user]
    assert found.library == str(tmp_path / "libcuda.so.580.159.04")
    assert found.device_files == {user: []}
    assert gpu.scan([plain]) is None


def test_two_nccl_processes_are_refused_one_is_not(mapper: Callable[..., int]) -> None:
    first = mapper("libcuda.so.1", "libnccl.so.2")
    second = mapper("libcuda.so.1", "libnccl.so.2")
    assert gpu.scan([first]) is not None
    with pytest.raises(UnsupportedProcessError, match="multi-process NCCL"):
        gpu.scan([first, second])


def test_an_mps_client_is_refused(mapper: Callable[..., int], tmp_path: Path) -> None:
    pipe = tmp_path / "mps"
    pipe.mkdir()
    (pipe / "control").write_text("")
    client = mapper("libcuda.so.1", env={"CUDA_MPS_PIPE_DIRECTORY": str(pipe)})
    with pytest.raises(UnsupportedProcessError, match="MPS server"):
        gpu.scan([client])
    (pipe / "control").unlink()  # the directory alone: no MPS daemon serves it
    assert gpu.scan([client]) is not None


def test_manifest_gpu_entry_is_checked_before_anything_is_loaded() -> None:
    assert gpurestore.plan_restore("g1", {"format": 1}) is None
    assert gpurestore.plan_restore("g1", {"gpu": None}) is None
    for bad in (
        "H200",
        {"processes": "300", "devices": []},
        {"processes": [0], "devices": []},
        {"processes": [300], "devices": [{"name": "NVIDIA H200"}]},
        {"processes": [True], "devices": []},
    ):
        with pytest.raises(GenerationInvalidError, match="malformed gpu entry"):
            gpurestore.plan_restore("g1", {"gpu": bad})


def test_describe_counts_models() -> None:
    assert gpurestore.describe([]) == "no GPU"
    assert gpurestore.describe(["NVIDIA H200"]) == "1x NVIDIA H200"
    assert gpurestore.describe(["A", "A", "B"]) == "2x A + 1x B"


@pytest.mark.parametrize(
    ("value", "ms"),
    [(None, 10000), ("2.5", 2500), ("0", 10000), ("-1", 10000), ("nan", 10000), ("x", 10000)],
)
def test_lock_timeout_setting(monkeypatch: pytest.MonkeyPatch, value: str | None, ms: int) -> None:
    if value is None:
        monkeypatch.delenv(gpu.LOCK_TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(gpu.LOCK_TIMEOUT_ENV, value)
    assert gpu.lock_timeout_ms() == ms


def test_only_root_owned_libraries_out_of_others_reach_are_trusted(tmp_path: Path) -> None:
    assert cuda.trusted_file("/bin/sh")  # root's, in root's directories
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"")
    assert not cuda.trusted_file(str(lib))  # under /tmp, which everyone may write
    assert not cuda.trusted_file(str(tmp_path / "missing"))


def test_an_untrusted_library_is_named_and_not_loaded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lib = tmp_path / "libcuda.so.1"
    lib.write_bytes(b"not a library")
    monkeypatch.setattr(cuda, "LIBRARY", str(tmp_path / "nowhere" / "libcuda.so.1"))
    monkeypatch.setattr(cuda, "STANDARD_PATHS", ())
    with pytest.raises(GpuError, match="not owned by root or writable by others, not loaded"):
        cuda.load([str(lib)])


def test_driver_release_from_proc_or_the_library_name(tmp_path: Path) -> None:
    version = tmp_path / "version"
    version.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build\n"
    )
    assert cuda.driver_release("/x/libcuda.so.1", str(version)) == "580.159.04"
    missing = str(tmp_path / "missing")
    assert cuda.driver_release("/x/libcuda.so.570.86.15", missing) == "570.86.15"
    assert cuda.driver_release("/x/libcuda.so.1", missing) is None


def test_uuid_text_round_trip() -> None:
    raw = bytes(range(16))
    text = cuda.uuid_text(raw)
    assert text == "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert cuda.uuid_bytes(text) == raw
