"""Volume size and grace period from memory limits."""

from __future__ import annotations

from podckpt.operator.domain import sizing

GI = 2**30
MI = 2**20


def test_memory_limits_are_summed_and_missing_ones_assumed() -> None:
    memory = sizing.checkpointed_memory(
        [
            {"name": "a", "resources": {"limits": {"memory": "1Gi"}}},
            {"name": "b", "resources": {"limits": {"memory": "512Mi"}}},
            {"name": "c"},
        ],
        assumed=2 * GI,
    )
    assert memory.total == GI + 512 * MI + 2 * GI
    assert memory.unlimited == ("c",)
    assert not memory.all_unlimited


def test_volume_holds_keep_plus_one_generations_with_headroom() -> None:
    memory = sizing.Memory(total=GI, unlimited=(), count=1)
    size = sizing.volume_size(
        memory, keep=2, headroom_fraction=0.10, headroom_bytes=256 * MI, default_bytes=10 * GI
    )
    expected = 3 * (GI * 1.1 + 256 * MI)
    assert expected <= size < expected + MI
    assert size % MI == 0


def test_volume_without_any_limit_gets_the_default() -> None:
    memory = sizing.Memory(total=4 * GI, unlimited=("a", "b"), count=2)
    size = sizing.volume_size(
        memory, keep=2, headroom_fraction=0.1, headroom_bytes=0, default_bytes=10 * GI
    )
    assert size == 10 * GI


def test_grace_period_covers_the_dump_at_the_assumed_throughput() -> None:
    assert sizing.grace_period_seconds(4 * GI, bytes_per_second=200 * MI, base_seconds=30) == 51
    assert sizing.grace_period_seconds(0, bytes_per_second=200 * MI, base_seconds=30) == 30


def test_quantity_for_a_claim_is_in_mebibytes() -> None:
    assert sizing.format_bytes(GI) == "1024Mi"
    assert sizing.format_bytes(GI + 1) == "1025Mi"
