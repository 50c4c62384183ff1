"""Issue 16.1: the agent never crashes on input, and never loses a committed generation
because of it. Each test below reproduces a bug of podckpt 0.1.0 (a traceback, or a committed
checkpoint destroyed) and fails on that release's agent."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from podckpt.agent import control, exitcodes
from podckpt.agent.context import Context
from podckpt.agent.criu import Criu
from podckpt.agent.errors import AgentError, GenerationInvalidError
from podckpt.agent.generations import FAILED, Generation
from podckpt.agent.settings import LiveSettings
from podckpt.agent.store import Store
from podckpt.agent.supervisor import Supervisor
from podckpt.api import format_downward_text, parse_settings

SRC = Path(__file__).resolve().parents[2] / "src"
MODE = "memverge.ai/checkpoint-mode"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podckpt.agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )


def _store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store" / "app", "app")
    store.open()
    return store


def _commit(store: Store, argv: list[str] | None = None) -> Generation:
    gen = store.begin()
    (gen.images / "pages-1.img").write_bytes(b"pages")
    store.commit(gen, {"criu_version": "4.2.1", "workload": {"argv": argv or ["app"]}})
    return gen


def test_store_json_of_random_bytes_is_rewritten_not_a_traceback(tmp_path: Path) -> None:
    store = tmp_path / "app"
    store.mkdir()
    (store / "store.json").write_bytes(random.Random(16).randbytes(300))
    labels = tmp_path / "labels"
    labels.write_text(format_downward_text({MODE: "false"}))
    done = _run("run", "--store", str(store), "--labels-file", str(labels), "--", "true")
    assert "Traceback" not in done.stderr
    assert done.returncode == 0, done.stderr
    assert json.loads((store / "store.json").read_text()) == {"layout": 1, "container": "app"}
    assert f"{store / 'store.json'}: is not UTF-8 text" in done.stderr


def test_labels_file_of_non_utf8_bytes_is_one_line_and_exit_200(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    labels.write_bytes(b'memverge.ai/checkpoint-mode="\xff\xfe"\n')
    done = _run("run", "--labels-file", str(labels), "--", "true")
    assert done.returncode == exitcodes.AGENT_FAILURE
    lines = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert lines == [f"podckpt-agent: error: {labels}: not UTF-8 text (byte 29)"]


def test_live_labels_turned_to_bad_bytes_keep_the_last_valid_settings(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    labels.write_text(format_downward_text({MODE: "true"}))
    live = LiveSettings(labels, None)
    assert live.read().mode
    labels.write_bytes(b"\x80\x81 garbage\n")
    assert live.current().mode  # read at SIGTERM: the checkpoint still happens


def test_argv_that_does_not_exist_keeps_the_committed_checkpoint(tmp_path: Path) -> None:
    """0.1.0 refused the restore (argv differs), retired every generation as a fresh start
    does, and only then failed to exec: the checkpoint that fixing the command would have
    restored was gone."""
    store = _store(tmp_path)
    gen = _commit(store, ["python3", "/app/server.py"])
    bad = ["/no/such/program"]
    ctx = Context(
        store=store,
        criu=Criu("/bin/false", (4, 2, 1)),
        privileged=False,
        exclude=[],
        lineage_start=time.time(),
        workload={"argv": bad},
    )
    settings = parse_settings({}, {})
    supervisor = Supervisor(bad, LiveSettings(None, None), settings, ctx, "app", time.monotonic())
    with pytest.raises(AgentError, match="cannot start /no/such/program"):
        supervisor.start()
    assert [g.name for g in store.candidates()] == [gen.name]
    assert not (gen.path / FAILED).exists()
    store.verify(gen)


def test_fresh_start_retires_the_old_generations_once_the_application_runs(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    _commit(store, ["python3", "/app/server.py"])
    ctx = Context(
        store=store,
        criu=Criu("/bin/false", (4, 2, 1)),
        privileged=False,
        exclude=[],
        lineage_start=time.time(),
        workload={"argv": ["true"]},
    )
    supervisor = Supervisor(
        ["true"], LiveSettings(None, None), parse_settings({}, {}), ctx, "app", time.monotonic()
    )
    supervisor.start()
    assert supervisor.root is not None
    os.waitpid(supervisor.root, 0)
    assert store.all_generations() == []


def test_a_deleted_manifest_is_not_called_a_killed_dump(tmp_path: Path) -> None:
    store = _store(tmp_path)
    older = _commit(store)
    newer = _commit(store)
    (newer.path / "manifest.json").unlink()
    half = store.begin()
    (removed_half, removed_newer) = sorted(store.cleanup(), key=lambda r: r.name, reverse=True)
    assert removed_half.name == half.name
    assert "did not finish" in removed_half.why
    assert removed_newer.name == newer.name
    assert "manifest.json is gone" in removed_newer.why
    assert [g.name for g in store.candidates()] == [older.name]


def test_latest_of_random_bytes_falls_back_to_the_manifests(tmp_path: Path) -> None:
    store = _store(tmp_path)
    gen = _commit(store)
    (store.root / "LATEST").write_bytes(b"\xff\x00\xfe" * 10)
    assert [g.name for g in store.candidates()] == [gen.name]
    assert store.latest_problem is not None
    assert "LATEST" in store.latest_problem


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"checksums": {"images/pages-1.img": "abc"}}, "entry of images/pages-1.img"),
        ({"checksums": ["images/pages-1.img"]}, "lists no files"),
        ({"stdio": ["pipe:[1]"]}, "stdio"),
        ({"workload": "python3"}, "workload"),
        ({"lineage_start": "yesterday"}, "lineage_start"),
        ({"criu_version": 4.2}, "criu_version"),
        ({"container": None}, "made for container None"),
    ],
)
def test_manifest_fields_of_the_wrong_type_invalidate_the_generation(
    tmp_path: Path, change: dict[str, object], reason: str
) -> None:
    store = _store(tmp_path)
    gen = _commit(store)
    manifest = json.loads((gen.path / "manifest.json").read_text())
    (gen.path / "manifest.json").write_text(json.dumps({**manifest, **change}))
    with pytest.raises(GenerationInvalidError, match=reason):
        store.verify(gen)


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000, b"\xff\xfe{}"])
def test_manifest_nesting_bomb_or_bad_bytes_invalidate_the_generation(
    tmp_path: Path, body: bytes
) -> None:
    store = _store(tmp_path)
    gen = _commit(store)
    (gen.path / "manifest.json").write_bytes(body)
    with pytest.raises(GenerationInvalidError, match=r"manifest\.json"):
        store.verify(gen)


@pytest.mark.parametrize("request_line", [b"[" * 60_000 + b"\n", b"\xff\n", b"[]\n", b"{}\n"])
def test_control_request_never_raises(request_line: bytes) -> None:
    assert control.decode_op(request_line) is None
