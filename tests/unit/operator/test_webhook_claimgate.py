"""The measured dump throughput as the webhook reads it from a checkpoint PVC's annotation."""

from __future__ import annotations

import pytest

from podckpt.operator.webhook.claimgate import measured

NAME = "podckpt.io/dump-bytes-per-second"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("52428800", 52428800),
        ("0", None),
        ("-5", None),
        ("fast", None),
        ("1e9", None),
        ("9" * 16, None),
        (None, None),
    ],
)
def test_only_a_positive_count_is_a_measured_throughput(
    value: str | None, expected: int | None
) -> None:
    annotations = {} if value is None else {NAME: value}
    assert measured(annotations, NAME) == expected
