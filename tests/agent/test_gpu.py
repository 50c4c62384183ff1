"""GPU processes under the real agent and real CRIU, with a stand-in CUDA driver.

These tests prove podckpt's sequencing around the CUDA driver's checkpoint API: which calls
the agent makes and in which order, what it records in the manifest, the same-GPU-model gate,
and that every failure leaves the application as it was. They do NOT prove the feature on a
GPU: the driver is podckpt.devtools.cuda_standin's libcuda.so.1, which keeps the
application's "GPU memory" outside the process so that only a dump and restore of that memory
through the checkpoint API brings it back. bench/gpu.py runs the real thing on an NVIDIA GPU.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
from agent_harness import AgentHarness, counts, phases, stop_and_wait, wait_count

from podckpt.agent import exitcodes
from podckpt.agent.exitcodes import CHECKPOINTED
from podckpt.devtools.cuda_standin import (
    ENV,
    H200,
    RELEASE,
    StandinGpu,
    build_library,
    library_binds,
    uuid_hex,
)
from podckpt.devtools.sandbox import Sandbox, wait_for

pytestmark = pytest.mark.criu

STRICT = {"memverge.ai/restore-policy": "strict"}


@pytest.fixture(scope="module")
def libcuda(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return build_library(tmp_path_factory.mktemp("standin") / "lib64")
    except (OSError, RuntimeError) as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the stand-in libcuda cannot be built: {exc}")
        pytest.skip(f"stand-in libcuda: {exc}")


def gpu(tmp_path: Path, name: str, *devices: tuple[str, int]) -> StandinGpu:
    return StandinGpu(tmp_path / name, list(devices or [(H200, 1)]))


def start(
    agent: AgentHarness,
    libcuda: Path,
    device: StandinGpu | None,
    *app_args: str,
    env: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> Sandbox:
    return agent.start(
        ["python3", "/apps/gpu_app.py", *app_args],
        binds=device.binds(libcuda) if device else library_binds(libcuda),
        env={**ENV, **(env or {})},
        annotations=annotations,
    )


def app_pids(box: Sandbox) -> list[int]:
    return [int(p) for p in re.findall(r"^ready pid=(\d+)", box.stdout_text(), re.MULTILINE)]


def child_counts(box: Sandbox) -> list[int]:
    return [int(m) for m in re.findall(r"^child (\d+)$", box.stdout_text(), re.MULTILINE)]


def verified(box: Sandbox) -> str:
    """SIGUSR1 (forwarded by the agent): the application reads its whole buffer back."""
    before = box.stdout_text().count("verify ")
    box.signal(10)
    assert wait_for(lambda: box.stdout_text().count("verify ") > before, 20), box.stdout_text()
    line = re.findall(r"^verify .*$", box.stdout_text(), re.MULTILINE)[-1]
    assert "mismatches=0" in line, line
    return line


def manifest(agent: AgentHarness, generation: str) -> dict[str, object]:
    path = agent.app_store / "generations" / generation / "manifest.json"
    loaded: dict[str, object] = json.loads(path.read_text())
    return loaded


def request_checkpoint(box: Sandbox) -> tuple[int, str]:
    done = box.exec(
        ["env", "PYTHONPATH=/opt/podckpt", "python3", "-m", "podckpt.agent", "checkpoint"],
        timeout=60,
    )
    return done.returncode, (done.stdout + done.stderr).decode()


def test_gpu_state_of_two_processes_survives_a_container_death(
    agent: AgentHarness, libcuda: Path, tmp_path: Path
) -> None:
    """Lock both, checkpoint both, CRIU; in a new container with another GPU of the same
    model: CRIU, restore both (remapped onto the new GPU), unlock both. The counters live only
    in GPU memory, so counting on proves the memory made the round trip."""
    first_gpu = gpu(tmp_path, "gpu1", (H200, 1))
    first = start(agent, libcuda, first_gpu, "--mib", "8", "--child")
    wait_count(first, 10)
    assert wait_for(lambda: len(child_counts(first)) >= 5, 20)
    root, child = sorted(app_pids(first))
    assert len(first_gpu.memory_files()) == 2
    assert stop_and_wait(first) == CHECKPOINTED
    reached, child_reached = counts(first)[-1], child_counts(first)[-1]
    assert first_gpu.steps() == [
        ("Lock", root), ("Lock", child), ("Checkpoint", root), ("Checkpoint", child),
    ]  # fmt: skip
    locks = [d for fn, _, d, rc in first_gpu.calls() if fn == "cuCheckpointProcessLock"]
    assert locks == ["timeoutMs=10000"] * 2
    assert first_gpu.memory_files() == [], "the GPU memory was handed to the processes"
    generation = agent.latest()
    assert generation is not None
    record = manifest(agent, generation)["gpu"]
    assert record == {
        "processes": [root, child],
        "model": H200,
        "count": 1,
        "devices": [{"name": H200, "uuid": "GPU-" + _dashed(1), "memory_bytes": 141 << 30}],
        "driver_version": RELEASE,
        "cuda_version": 13000,
        "library": f"/usr/local/nvidia/lib64/libcuda.so.{RELEASE}",
    }
    dump = phases(first, "dump", "ok")[0]
    assert dump["gpu"]["processes"] == [root, child]

    second_gpu = gpu(tmp_path, "gpu2", (H200, 2))
    second = start(agent, libcuda, second_gpu, "--mib", "8", "--child")
    seen = wait_count(second, 5)
    assert seen[0] == reached + 1, f"counted from {seen[0]}, not {reached + 1}"
    assert wait_for(lambda: child_counts(second), 20)
    assert child_counts(second)[0] == child_reached + 1
    pair = f"pairs={uuid_hex(1)}={uuid_hex(2)},"
    restores = [d for fn, _, d, rc in second_gpu.calls() if fn == "cuCheckpointProcessRestore"]
    assert restores == [pair, pair]
    assert second_gpu.steps() == [
        ("Restore", root), ("Restore", child), ("Unlock", root), ("Unlock", child),
    ]  # fmt: skip
    assert len(second_gpu.memory_files()) == 2
    restore = phases(second, "restore", "ok")[0]
    assert restore["gpu"]["processes"] == [root, child]
    assert "fresh-start" not in second.stderr_text()
    verified(second)


def _dashed(n: int) -> str:
    h = uuid_hex(n)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def test_checkpoint_on_request_gives_the_gpu_back_then_a_crash_restores_it(
    agent: AgentHarness, libcuda: Path, tmp_path: Path
) -> None:
    """A checkpoint that leaves the application running restores and unlocks it in place
    (after SIGCONT); a node crash afterwards (SIGKILL, no final dump) restores from it."""
    device = gpu(tmp_path, "gpu1")
    box = start(agent, libcuda, device)
    wait_count(box, 5)
    (pid,) = app_pids(box)
    before = counts(box)[-1]
    code, out = request_checkpoint(box)
    assert code == 0, out
    at_checkpoint = counts(box)[-1]
    wait_count(box, len(counts(box)) + 10)
    assert device.steps() == [("Lock", pid), ("Checkpoint", pid), ("Restore", pid), ("Unlock", pid)]
    assert device.memory_files() == [f"mem.{pid}"]
    verified(box)
    commit = phases(box, "commit", "ok")[0]
    assert commit["gpu_resume_s"] >= 0
    box.kill()
    box.wait(30)

    again = start(agent, libcuda, gpu(tmp_path, "gpu2"))
    seen = wait_count(again, 3)
    assert before < seen[0] <= at_checkpoint + 1
    verified(again)


@pytest.mark.parametrize(
    ("failure", "app_args", "error", "undo"),
    [
        ("cuCheckpointProcessLock 999", (), "cuCheckpointProcessLock", []),
        ("cuCheckpointProcessCheckpoint 999", (), "CUDA_ERROR_UNKNOWN", ["Unlock"]),
        ("cuCheckpointProcessCheckpoint leak", (), "managed (UVM)", ["Restore", "Unlock"]),
        (None, ("--ghost",), "criu dump failed", ["Restore", "Unlock"]),
    ],
    ids=["lock", "checkpoint", "device-file-left", "criu-dump"],
)
def test_a_failed_gpu_checkpoint_leaves_the_application_as_it_was(
    agent: AgentHarness,
    libcuda: Path,
    tmp_path: Path,
    failure: str | None,
    app_args: Sequence[str],
    error: str,
    undo: list[str],
) -> None:
    """Whatever step fails, the agent brings the process back to running (restore if it was
    checkpointed, unlock if locked): it counts on with its GPU memory intact."""
    device = gpu(tmp_path, "gpu1")
    box = start(agent, libcuda, device, *app_args)
    wait_count(box, 5)
    (pid,) = app_pids(box)
    if failure:
        device.fail(failure)
    code, out = request_checkpoint(box)
    assert code == 1, out
    assert error in out
    failed = phases(box, "dump", "failed")[0]
    assert error in failed["error"]
    done = [fn for fn, _ in device.steps()]
    assert done[-len(undo) :] == undo if undo else "Checkpoint" not in done
    assert wait_count(box, len(counts(box)) + 5)
    verified(box)
    assert agent.latest() is None
    assert device.memory_files() == [f"mem.{pid}"]


def test_lock_timeout_is_undone_and_the_application_gets_its_sigterm(
    agent: AgentHarness, libcuda: Path, tmp_path: Path
) -> None:
    """A CUDA call that never finishes: the lock gives up after the timeout, the process is
    left running and gets the SIGTERM; no generation is written."""
    device = gpu(tmp_path, "gpu1")
    box = start(agent, libcuda, device, env={"PODCKPT_GPU_LOCK_TIMEOUT_S": "1.5"})
    wait_count(box, 5)
    device.fail("cuCheckpointProcessLock busy")
    assert stop_and_wait(box) == exitcodes.CHECKPOINT_FAILED  # no checkpoint, app exited 0
    assert phases(box, "exit", "not-checkpointed")[0]["app_code"] == 0
    assert "exiting 0: SIGTERM" in box.stdout_text()
    failed = phases(box, "dump", "failed")[0]
    assert "timed out after 1.5 s" in failed["error"]
    assert failed["then"] == "SIGTERM forwarded"
    assert [(fn, d, rc) for fn, _, d, rc in device.calls() if "Lock" in fn] == [
        ("cuCheckpointProcessLock", "timeoutMs=1500", 909)
    ]
    assert agent.latest() is None


def test_restore_only_onto_the_same_gpu_model_and_count(
    agent: AgentHarness, libcuda: Path, tmp_path: Path
) -> None:
    """Another model, another count, no GPU: the generation is refused before CRIU runs (and
    kept: it is sound, a container on the right GPU may still restore it), the application
    starts fresh (a Warning) or, under restore-policy strict, the agent exits 201. Without a
    GPU the fresh application fails as it would without podckpt (its own exit code)."""
    first = start(agent, libcuda, gpu(tmp_path, "gpu1"), annotations={})
    wait_count(first, 5)
    assert stop_and_wait(first) == CHECKPOINTED
    saved = tmp_path / "saved-store"
    shutil.copytree(agent.store_dir, saved)

    cases = [
        ("a100", [("NVIDIA A100-SXM4-80GB", 3)], {}, "this container has 1x NVIDIA A100"),
        ("two", [(H200, 1), (H200, 4)], STRICT, "this container has 2x NVIDIA H200"),
        ("none", [], {}, "CUDA_ERROR_NO_DEVICE"),
    ]
    for name, devices, keys, error in cases:
        shutil.rmtree(agent.store_dir)
        shutil.copytree(saved, agent.store_dir)
        device = StandinGpu(tmp_path / name, devices) if devices else None
        box = start(agent, libcuda, device, annotations=keys)
        if keys:
            assert box.wait(30) == exitcodes.RESTORE_FAILURE
            assert "count" not in box.stdout_text()
        elif device is None:
            assert box.wait(30) == 3
            assert "cuda error cuInit 100" in box.stdout_text()
        else:
            assert wait_count(box, 3)[0] == 1
        if not keys:
            assert phases(box, "restore", "fallback-fresh")
            assert phases(box, "fresh-start", "ok")
        refused = phases(box, "restore", "refused")[0]
        assert "1x NVIDIA H200" in refused["why"]
        assert error in refused["why"], refused["why"]
        assert not phases(box, "restore", "failed")
        if device:
            assert device.steps() == [], "the driver was never asked to restore"
        box.destroy()


@pytest.mark.parametrize("step", ["cuCheckpointProcessRestore", "cuCheckpointProcessUnlock"])
def test_failed_gpu_restore_ends_the_tree_and_falls_back_to_the_previous_generation(
    agent: AgentHarness, libcuda: Path, tmp_path: Path, step: str
) -> None:
    """The newest generation's GPU restore fails: its restored tree is killed and reaped (its
    PIDs are needed again), the generation is FAILED, and the previous one restores."""
    box = start(agent, libcuda, gpu(tmp_path, "gpu1"))
    wait_count(box, 5)
    before = counts(box)[-1]
    code, out = request_checkpoint(box)
    assert code == 0, out
    older = agent.latest()
    at_older = counts(box)[-1]
    wait_count(box, len(counts(box)) + 20)
    assert stop_and_wait(box) == CHECKPOINTED
    newest = agent.latest()
    assert newest != older

    device = gpu(tmp_path, "gpu2")
    device.fail(f"{step} 999 once")
    again = start(agent, libcuda, device)
    seen = wait_count(again, 3)
    assert before < seen[0] <= at_older + 1, "continued from the older generation"
    failed = phases(again, "restore", "failed")
    assert [f["generation"] for f in failed] == [newest]
    assert step in failed[0]["error"]
    ok = phases(again, "restore", "ok")[0]
    assert ok["generation"] == older
    assert ok["fallback"] is True
    assert (agent.app_store / "generations" / newest / "FAILED").exists() or not (
        agent.app_store / "generations" / newest
    ).exists()
    verified(again)


def test_a_mig_instance_is_refused_in_one_line(
    agent: AgentHarness, libcuda: Path, tmp_path: Path
) -> None:
    device = StandinGpu(tmp_path / "mig", [("NVIDIA A100-SXM4-40GB MIG 1g.5gb", 1)])
    box = start(agent, libcuda, device)
    wait_count(box, 3)
    assert stop_and_wait(box) == exitcodes.CHECKPOINT_FAILED  # refused: no checkpoint
    assert "exiting 0: SIGTERM" in box.stdout_text()
    assert "MIG" in phases(box, "dump", "failed")[0]["error"]
    assert device.steps() == []
