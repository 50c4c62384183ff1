"""Metrics from agent lines (podckpt.operator.controller.journal.observe): each line counted
once, into the right series."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY

from podckpt.operator.controller.journal import fresh_start_reason, observe


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def line(phase: str, outcome: str, **fields: Any) -> dict[str, Any]:
    return {"agent": "podckpt", "phase": phase, "outcome": outcome, **fields}


def test_checkpoint_and_restore_lines_feed_counters_and_histograms() -> None:
    labels = {"namespace": "ns-journal", "workload_kind": "statefulset"}
    before_dump = value("podckpt_dump_duration_seconds_count")
    before_bytes = value("podckpt_checkpoint_image_bytes_sum")
    observe(
        [
            line("dump", "ok", duration_s=0.7, generation="g-1"),
            line("commit", "ok", duration_s=0.2, generation="g-1", bytes=3 * 2**20),
        ],
        "ns-journal",
        "statefulset",
    )
    assert value("podckpt_checkpoints_total", outcome="ok", **labels) == 1
    assert value("podckpt_dump_duration_seconds_count") == before_dump + 1
    assert value("podckpt_checkpoint_image_bytes_sum") == before_bytes + 3 * 2**20
    observe([line("dump", "failed", error="x")], "ns-journal", "statefulset")
    assert value("podckpt_checkpoints_total", outcome="failed", **labels) == 1
    observe(
        [line("restore", "ok", duration_s=1.5, generation="g-1"), line("fresh-start", "ok")],
        "ns-journal",
        "statefulset",
    )
    assert value("podckpt_restores_total", outcome="ok", **labels) == 1
    assert value("podckpt_fresh_starts_total", reason="no-checkpoint", **labels) == 0


def test_fresh_start_reasons() -> None:
    assert fresh_start_reason([line("fresh-start", "ok")]) == "no-checkpoint"
    assert (
        fresh_start_reason(
            [
                line("restore", "failed"),
                line("restore", "fallback-fresh"),
                line("fresh-start", "ok"),
            ]
        )
        == "restore-failed"
    )
    skipped = line("restore", "skipped", why="restore-policy is fresh")
    assert fresh_start_reason([skipped, line("fresh-start", "ok")]) == "policy-fresh"
    done = line("restore", "skipped", why="the application completed in its last run")
    assert fresh_start_reason([done]) == "completed"
    assert fresh_start_reason([line("restore", "ok")]) is None
