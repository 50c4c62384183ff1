"""The agent's driver binding (agent/cuda.py) and GPU sequencing (agent/gpu.py,
agent/gpurestore.py) against the stand-in driver on a live process, without CRIU: the in-place
checkpoint and restore a periodic checkpoint does, remapping onto another GPU, the driver's
errors by name.

Like test_gpu.py this tests our sequencing, not the feature on a GPU
(see podckpt.devtools.cuda_standin).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podckpt.agent import cuda, gpu, gpurestore
from podckpt.agent.errors import GpuError
from podckpt.devtools.cuda_standin import H200, StandinGpu, build_library, uuid_hex

APP = Path(__file__).resolve().parent / "apps" / "gpu_app.py"


@pytest.fixture(scope="module")
def libdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return build_library(tmp_path_factory.mktemp("standin-driver") / "lib64")
    except (OSError, subprocess.CalledProcessError) as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the stand-in libcuda cannot be built: {exc}")
        pytest.skip(f"stand-in libcuda: {exc}")


@pytest.fixture
def device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandinGpu:
    found = StandinGpu(tmp_path / "gpu", [(H200, 1)])
    monkeypatch.setenv("STANDIN_GPU_DIR", str(found.path))
    return found


@pytest.fixture
def app(libdir: Path, device: StandinGpu, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    out = tmp_path / "app.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(APP)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "LD_LIBRARY_PATH": str(libdir)},
        )
    deadline = time.monotonic() + 20
    while "count 3" not in out.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "count 3" in out.read_text(), out.read_text()
    yield proc
    proc.kill()
    proc.wait()


def _output(proc: subprocess.Popen[str], tmp_path: Path) -> str:
    return (tmp_path / "app.out").read_text()


def _verify(proc: subprocess.Popen[str], tmp_path: Path) -> None:
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while "verify" not in _output(proc, tmp_path) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "verify mismatches=0" in _output(proc, tmp_path), _output(proc, tmp_path)


def _counts(proc: subprocess.Popen[str], tmp_path: Path) -> int:
    return len(re.findall(r"^count ", _output(proc, tmp_path), re.MULTILINE))


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in lives under /tmp, which is not a place the agent loads libraries from."""
    monkeypatch.setattr(cuda, "trusted_file", lambda path: True)


@pytest.mark.usefixtures("trusting")
def test_checkpoint_and_resume_in_place(
    app: subprocess.Popen[str], device: StandinGpu, tmp_path: Path
) -> None:
    found = gpu.scan([app.pid])
    assert found is not None
    held = gpu.suspend(found, contextlib.nullcontext)
    assert held is not None
    assert held.driver.state(app.pid) == cuda.CHECKPOINTED
    assert device.memory_files() == [], "GPU memory handed to the process"
    frozen = _counts(app, tmp_path)
    time.sleep(0.3)
    assert _counts(app, tmp_path) == frozen, "CUDA calls block while locked"
    gpu.resume(held)
    assert held.driver.state(app.pid) == cuda.RUNNING
    assert device.memory_files() == [f"mem.{app.pid}"]
    _verify(app, tmp_path)
    steps = device.steps(caller=os.getpid())
    assert steps == [(s, app.pid) for s in ("Lock", "Checkpoint", "Restore", "Unlock")]


@pytest.mark.usefixtures("trusting")
def test_restore_onto_another_gpu_needs_the_uuid_pair(
    app: subprocess.Popen[str], device: StandinGpu, tmp_path: Path
) -> None:
    found = gpu.scan([app.pid])
    assert found is not None
    held = gpu.suspend(found, contextlib.nullcontext)
    assert held is not None
    record = held.record()
    (device.path / "devices").write_text(f"{H200}|{uuid_hex(9)}|{141 << 30}\n")
    with pytest.raises(GpuError, match=r"CUDA_ERROR_INVALID_DEVICE \(101\)"):
        held.driver.restore(app.pid)
    plan = gpurestore.plan_restore("g1", {"gpu": record})
    assert plan is not None
    assert plan.pairs == [
        (record["devices"][0]["uuid"], cuda.uuid_text(bytes.fromhex(uuid_hex(9))))
    ]
    gpurestore.resume_restored(plan, app.pid)
    assert held.driver.state(app.pid) == cuda.RUNNING
    _verify(app, tmp_path)
    with pytest.raises(GpuError, match="CUDA_ERROR_ILLEGAL_STATE"):
        held.driver.unlock(app.pid)  # not locked: the driver's own state rules hold
