"""`kubectl podckpt`'s pure parts: reasons a pod is not checkpointable, which webhook entry
applies, selectors, and the human rendering. The commands themselves are tested against the
real cluster (tests/e2e/test_operations.py)."""

from __future__ import annotations

import datetime
from typing import Any

from podckpt.cli import render
from podckpt.cli.explain import which_entry
from podckpt.cli.inspect import Domain, not_checkpointable, selector_text
from podckpt.cli.main import build_parser

D = Domain()
NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


def pod(
    labels: dict[str, str], annotations: dict[str, str], phase: str = "Running"
) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "labels": labels, "annotations": annotations},
        "status": {"phase": phase},
    }


INJECTED = {
    "podckpt.io/injected": "1",
    "podckpt.io/claim": "podckpt-x",
    "podckpt.io/containers": "app",
}
BOUND = {"status": {"phase": "Bound"}}
MODE = {"memverge.ai/checkpoint-mode": "true"}


def test_a_ready_pod_has_no_reason() -> None:
    assert not_checkpointable(pod(MODE, INJECTED), BOUND, {}, ({}, {}), D) == []


def test_reasons() -> None:
    no_label = not_checkpointable(pod({}, {}), None, {}, ({}, {}), D)
    assert "not opted in" in no_label[0]
    late = not_checkpointable(pod(MODE, {}), None, {}, ({}, {}), D)
    assert "created without the podckpt agent" in late[0]
    dormant = not_checkpointable(pod({}, INJECTED), BOUND, {}, ({}, {}), D)
    assert "dormant" in dormant[0]
    pending = not_checkpointable(
        pod(MODE, INJECTED), {"status": {"phase": "Pending"}}, {}, ({}, {}), D
    )
    assert pending == ["its checkpoint volume podckpt-x is Pending"]
    missing = not_checkpointable(pod(MODE, INJECTED), None, {}, ({}, {}), D)
    assert "does not exist" in missing[0]
    failed = {"containers": {"app": {"last_checkpoint": {"outcome": "failed", "error": "criu: x"}}}}
    assert "criu: x" in not_checkpointable(pod(MODE, INJECTED), BOUND, failed, ({}, {}), D)[0]
    bad = not_checkpointable(
        pod({"memverge.ai/checkpoint-mode": "yes please"}, INJECTED), BOUND, {}, ({}, {}), D
    )
    assert "invalid key" in bad[0]
    by_namespace = not_checkpointable(pod({}, INJECTED), BOUND, {}, (MODE, {}), D)
    assert by_namespace == []


def test_which_webhook_entry() -> None:
    assert which_entry(MODE, {}, "ns")[0] == "opt-in"
    assert which_entry({}, MODE, "ns")[0] == "namespace-default"
    assert which_entry({}, {"memverge.ai/checkpoint-injection": "enabled"}, "ns")[0] == "injection"
    assert which_entry({}, {}, "ns")[0] == "none"


def test_selector_text() -> None:
    selector = {
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "x", "operator": "DoesNotExist"},
        ],
    }
    assert selector_text(selector) == "app=web,tier in (a,b),!x"


def test_render() -> None:
    assert render.age("2026-01-01T11:59:15Z", NOW) == "45s"
    assert render.age("2026-01-01T08:59:00.123Z", NOW) == "3h"
    assert render.age(None, NOW) == "-"
    assert render.size(3 * 2**20) == "3.0 MiB"
    assert render.size(None) == "-"
    assert render.table(("A", "LONGER"), [("x", None)]) == "A   LONGER\nx   -"


def test_parser_accepts_kubectl_flags_after_the_command() -> None:
    args = build_parser().parse_args(["status", "deployment/web", "-n", "ns", "-o", "json"])
    assert (args.target, args.namespace, args.output) == ("deployment/web", "ns", "json")
    args = build_parser().parse_args(["checkpoint", "p", "-c", "app"])
    assert (args.pod, args.container) == ("p", "app")
