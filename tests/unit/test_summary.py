"""The checkpoint journal on the PVC (podckpt.api.summary): what each agent line does to it,
and that re-reading lines changes nothing (so nothing is counted or announced twice)."""

from __future__ import annotations

from typing import Any

from podckpt.api import summary


def line(phase: str, outcome: str, ts: str, **fields: Any) -> dict[str, Any]:
    return {"agent": "podckpt", "ts": ts, "phase": phase, "outcome": outcome, **fields}


G1, G2, G3 = "20250101T000000Z-1", "20250101T000100Z-2", "20250101T000200Z-3"


def checkpoint(gen: str, ts: str, pruned: list[str] | None = None) -> list[dict[str, Any]]:
    return [
        line("dump", "ok", ts, duration_s=0.5, generation=gen),
        line("commit", "ok", ts + "1", duration_s=0.1, generation=gen, bytes=2**20, pruned=pruned),
    ]


def test_commits_add_generations_and_prune() -> None:
    s = summary.fold(summary.empty(), "app", checkpoint(G1, "t1"), "pod-a")
    s = summary.fold(s, "app", checkpoint(G2, "t2"), "pod-a")
    s = summary.fold(s, "app", checkpoint(G3, "t3", pruned=[G1]), "pod-a")
    entry = s["containers"]["app"]
    assert [g["generation"] for g in entry["generations"]] == [G2, G3]
    last = entry["last_checkpoint"]
    assert (last["outcome"], last["generation"], last["dump_s"], last["commit_s"]) == (
        "ok",
        G3,
        0.5,
        0.1,
    )
    assert last["bytes"] == 2**20


def test_reapplied_lines_change_nothing() -> None:
    lines = [*checkpoint(G1, "t1"), line("restore", "ok", "t5", generation=G1, duration_s=1.0)]
    once = summary.fold(summary.empty(), "app", lines, "pod-a")
    assert summary.fold(once, "app", lines, "pod-a") is once
    for item in lines:
        assert summary.apply(once, "app", item, "pod-a") is once


def test_restore_retires_the_generation_and_older_ones() -> None:
    s = summary.fold(summary.empty(), "app", [*checkpoint(G1, "t1"), *checkpoint(G2, "t2")], "p")
    s = summary.apply(s, "app", line("restore", "ok", "t3", generation=G1, duration_s=2), "q")
    entry = s["containers"]["app"]
    assert [g["generation"] for g in entry["generations"]] == [G2]
    assert entry["last_restore"]["outcome"] == "ok"
    assert entry["last_restore"]["pod"] == "q"


def test_failed_restore_then_fresh_start() -> None:
    s = summary.fold(summary.empty(), "app", checkpoint(G1, "t1"), "p")
    s = summary.fold(
        s,
        "app",
        [
            line("restore", "failed", "t2", generation=G1, error="bad image"),
            line("restore", "fallback-fresh", "t3", why="no generation could be restored"),
            line("fresh-start", "ok", "t4"),
        ],
        "q",
    )
    entry = s["containers"]["app"]
    assert entry["generations"] == []
    assert entry["last_restore"]["outcome"] == "fallback-fresh"


def test_failed_dump_is_the_last_checkpoint() -> None:
    s = summary.apply(
        summary.empty(),
        "app",
        line("dump", "failed", "t1", error="criu: no", reason="sigterm"),
        "p",
    )
    assert s["containers"]["app"]["last_checkpoint"]["error"] == "criu: no"


def test_unreadable_annotation_is_empty_and_other_phases_are_ignored() -> None:
    assert summary.parse("{not json") == summary.empty()
    assert summary.parse('"a string"') == summary.empty()
    s = summary.empty()
    warned = summary.apply(s, "app", line("settings", "warning", "t"), "p")
    assert warned["containers"]["app"]["generations"] == []  # journaled, nothing else
    assert summary.apply(warned, "app", line("settings", "warning", "t"), "p") is warned
    assert summary.parse(summary.dump(summary.fold(s, "app", checkpoint(G1, "t"), "p")))


def test_completed_application_clears_generations() -> None:
    s = summary.fold(summary.empty(), "app", checkpoint(G1, "t1"), "p")
    s = summary.apply(
        s, "app", line("exit", "application-exited", "t2", code=0, store_completed=True), "p"
    )
    assert s["containers"]["app"]["generations"] == []
    assert s["containers"]["app"]["completed"]["code"] == 0
