"""Which generation belongs in a starting container (restorable.not_here), without CRIU."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, cast

from podckpt.agent.context import Context
from podckpt.agent.generations import Generation
from podckpt.agent.manifest import FORMAT, Manifest
from podckpt.agent.restorable import NEW_REVISION, SAME_POD, not_here

GEN = Generation("20261201T000000Z-000001", Path("/nonexistent"))
OURS = {"pod_uid": "uid-b", "boot_id": "boot-1"}
WORKLOAD = {"argv": ["/app"], "image": "reg/app:1", "revision": "pod-template-hash=aaa"}


def _ctx(origin: dict[str, str], workload: dict[str, object] = WORKLOAD) -> Context:
    return cast(Context, types.SimpleNamespace(origin=origin, workload=workload))


def _manifest(origin: dict[str, str], workload: dict[str, object] = WORKLOAD) -> Manifest:
    return _body({"origin": origin, "workload": workload})


def _body(body: dict[str, Any]) -> Manifest:
    return Manifest(GEN.name, FORMAT, False, {}, body)


def test_another_pod_of_the_same_revision_restores() -> None:
    assert not_here(_ctx(OURS), GEN, _manifest({"pod_uid": "uid-a", "boot_id": "boot-1"})) is None


def test_the_same_pod_in_the_same_boot_starts_fresh() -> None:
    verdict = not_here(_ctx(OURS), GEN, _manifest(dict(OURS)))
    assert verdict is not None
    assert (verdict.cause, verdict.generation) == (SAME_POD, GEN.name)


def test_the_same_pod_after_a_node_reboot_restores() -> None:
    # The node restarted under the pod; the kubelet restarts its containers: no cure intended.
    assert not_here(_ctx(OURS), GEN, _manifest({"pod_uid": "uid-b", "boot_id": "boot-0"})) is None


def test_another_revision_image_or_argv_starts_fresh() -> None:
    made = {"pod_uid": "uid-a", "boot_id": "boot-1"}
    for key, value in (
        ("revision", "pod-template-hash=bbb"),
        ("image", "reg/app:2"),
        ("argv", ["/x"]),
    ):
        verdict = not_here(_ctx(OURS), GEN, _manifest(made, {**WORKLOAD, key: value}))
        assert verdict is not None
        assert verdict.cause == NEW_REVISION
        assert key in verdict.why


def test_what_one_side_does_not_know_is_not_compared() -> None:
    # a manifest of an older agent (no origin, no revision); an agent run by hand (no uid)
    assert not_here(_ctx(OURS), GEN, _body({"workload": {"argv": ["/app"]}})) is None
    assert not_here(_ctx({"boot_id": "boot-1"}), GEN, _manifest({"boot_id": "boot-1"})) is None
    no_revision = {"argv": ["/app"], "image": "reg/app:1"}
    assert not_here(_ctx(OURS, no_revision), GEN, _manifest({"pod_uid": "uid-a"})) is None
