"""Workload identity from what a pod carries at admission (ARCHITECTURE section 4)."""

from __future__ import annotations

from typing import Any

import pytest

from podckpt.operator.domain.identity import (
    Identity,
    WorkloadKind,
    bounded_name,
    label_value,
    resolve_identity,
)


def test_statefulset_ordinal_from_pod_index_label(make_pod: Any) -> None:
    pod = make_pod(name="db-3", owner="statefulset", labels={"apps.kubernetes.io/pod-index": "3"})
    identity = resolve_identity(pod)
    assert identity == Identity(WorkloadKind.STATEFULSET, "db", "3")
    assert identity.claim_name == "podckpt-statefulset-db-3"
    assert not identity.needs_slot


def test_statefulset_ordinal_from_name_without_label(make_pod: Any) -> None:
    assert resolve_identity(make_pod(name="db-12", owner="statefulset")).index == "12"


def test_job_identity_is_the_run(make_pod: Any) -> None:
    identity = resolve_identity(make_pod(name=None, owner="job"))
    assert identity == Identity(WorkloadKind.JOB, "train", None, "1234abcd")
    assert identity.key == "job-train-1234abcd"


def test_indexed_job_identity_has_the_completion_index(make_pod: Any) -> None:
    pod = make_pod(name=None, owner="job", labels={"batch.kubernetes.io/job-completion-index": "4"})
    assert resolve_identity(pod).key == "job-train-1234abcd-4"


def test_cronjob_run_is_a_job_with_its_own_uid(make_pod: Any) -> None:
    first = make_pod(name=None, owner={**_job("nightly-2901"), "uid": "aaaaaaaa-1"})
    second = make_pod(name=None, owner={**_job("nightly-2902"), "uid": "bbbbbbbb-2"})
    assert resolve_identity(first).claim_name != resolve_identity(second).claim_name


def _job(name: str) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "name": name}


def test_deployment_pod_needs_a_slot(make_pod: Any) -> None:
    pod = make_pod(name=None, owner="replicaset", labels={"pod-template-hash": "5d4f8"})
    identity = resolve_identity(pod)
    assert identity == Identity(WorkloadKind.DEPLOYMENT, "web")
    assert identity.needs_slot
    slotted = identity.with_slot(2)
    assert slotted.claim_name == "podckpt-deployment-web-2"


def test_bare_replicaset_is_its_own_workload(make_pod: Any) -> None:
    identity = resolve_identity(make_pod(name=None, owner="replicaset"))
    assert identity == Identity(WorkloadKind.REPLICASET, "web-5d4f8")


def test_plain_pod_and_unknown_controllers_are_pods(make_pod: Any) -> None:
    assert resolve_identity(make_pod(name="solo")) == Identity(WorkloadKind.POD, "solo")
    assert resolve_identity(make_pod(name=None, owner="daemonset")).kind is WorkloadKind.POD


def test_identity_round_trips_through_its_annotation() -> None:
    for identity in (
        Identity(WorkloadKind.JOB, "train", "4", "1234abcd"),
        Identity(WorkloadKind.DEPLOYMENT, "web", "0"),
        Identity(WorkloadKind.POD, "solo"),
    ):
        assert Identity.decode(identity.encode()) == identity
    with pytest.raises(ValueError):
        Identity.decode("deployment")


def test_long_names_stay_valid_and_distinct() -> None:
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(bounded_name(a)) <= 200
    assert bounded_name(a) != bounded_name(b)
    assert len(label_value(a)) <= 63
    assert label_value(a) != label_value(b)
