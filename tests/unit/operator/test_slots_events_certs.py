"""Agent lines to Events, orphans, the webhook certificate."""

from __future__ import annotations

import datetime
import json

from cryptography import x509

from podckpt.api.contract import ExitCode
from podckpt.operator import certs
from podckpt.operator.controller import events
from podckpt.operator.controller.orphans import orphans


def _line(**fields: object) -> str:
    return json.dumps({"agent": "podckpt", "ts": "t", **fields})


def test_start_lines_become_events() -> None:
    text = "\n".join(
        [
            "application output",
            _line(phase="restore", outcome="failed", generation="g2", error="bad size"),
            _line(phase="restore", outcome="ok", generation="g1", duration_s=0.5),
            _line(phase="commit", outcome="ok", generation="g3", bytes=2**21),
            _line(phase="dump", outcome="failed", reason="periodic", error="criu said no"),
            _line(phase="cleanup", outcome="ok"),
            "{not json",
        ]
    )
    got = [(e.type, e.reason, e.detail) for e in events.start_events("app", text)]
    # checkpoints are facts of the container's end, not of its start
    assert got == [("Warning", "RestoreFailed", "g2"), ("Normal", "Restored", "g1")]
    restored = events.start_events("app", text)[1]
    assert restored.message == "container app: restored from generation g1 in 0.50 s"


def test_store_problems_the_agent_reports_are_warnings() -> None:
    text = "\n".join(
        [
            _line(phase="store", outcome="unusable", error="store /s has unknown layout 2"),
            _line(phase="store", outcome="repaired", error="/s/store.json: is not UTF-8 text"),
            _line(phase="cleanup", outcome="damaged", removed=["g1"], why="manifest is gone"),
            _line(phase="restore", outcome="refused", generation="g2", why="dumped from argv"),
            _line(phase="cleanup", outcome="ok", removed=["g3"], why="did not finish"),
        ]
    )
    got = [(e.type, e.reason) for e in events.start_events("app", text)]
    assert got == [
        ("Warning", "CheckpointStoreUnusable"),
        ("Warning", "CheckpointStoreDamaged"),
        ("Warning", "CheckpointDamaged"),
        ("Warning", "RestoreRefused"),
    ]
    messages = [e.message for e in events.start_events("app", text)]
    assert "unknown layout 2" in messages[0]
    assert "g1" in messages[2]
    assert "manifest is gone" in messages[2]


def test_a_skipped_checkpoint_is_a_warning_with_the_deadline_figures() -> None:
    message = "\n".join(
        [
            _line(
                phase="dump",
                outcome="skipped",
                reason="sigterm",
                bytes=3 * 2**30,
                bytes_per_s=100 * 2**20,
                throughput="measured",
                estimate_s=39.65,
                left_s=29.9,
            ),
            _line(phase="exit", outcome="not-checkpointed", code=203, app_code=0),
        ]
    )
    (event,) = events.exit_events("app", ExitCode.CHECKPOINT_FAILED, message)
    assert (event.type, event.reason) == ("Warning", "CheckpointSkipped")
    assert "3072 MiB at 100 MiB/s measured need ~39.65 s, 29.9 s" in event.message


def test_the_throughput_of_the_final_checkpoint_is_read_from_the_termination_message() -> None:
    message = "\n".join(
        [
            _line(phase="commit", outcome="ok", generation="g1", throughput_bps=1234, bytes=9),
            _line(phase="dump", outcome="ok", reason="sigterm", generation="g2"),
            _line(phase="commit", outcome="ok", generation="g2", throughput_bps=5678, bytes=9),
        ]
    )
    assert events.measured_throughput(ExitCode.CHECKPOINTED, message) == 5678
    assert events.measured_throughput(ExitCode.CHECKPOINT_FAILED, message) is None
    odd = _line(phase="commit", outcome="ok", generation="g2", throughput_bps="fast")
    assert events.measured_throughput(ExitCode.CHECKPOINTED, odd) is None


def test_fresh_start_after_failed_restore_is_a_warning() -> None:
    text = _line(phase="restore", outcome="fallback-fresh", why="no generation could be restored")
    (event,) = events.start_events("app", text)
    assert (event.type, event.reason) == ("Warning", "StartedFresh")


def test_fresh_start_by_rule_names_its_cause() -> None:
    text = _line(phase="restore", outcome="skipped", cause="SamePod", why="restarted in its pod")
    (event,) = events.start_events("app", text)
    assert (event.type, event.reason) == ("Normal", "StartedFresh")
    assert event.message == "container app: started fresh (SamePod: restarted in its pod)"


def test_exit_code_says_how_a_container_ended() -> None:
    restored = _line(phase="restore", outcome="ok", generation="g1")
    periodic = _line(phase="dump", outcome="ok", reason="periodic", generation="g2")
    periodic_commit = _line(phase="commit", outcome="ok", generation="g2", bytes=1)
    final = _line(phase="dump", outcome="ok", reason="sigterm", generation="g3")
    final_commit = _line(phase="commit", outcome="ok", generation="g3", bytes=2**21)
    message = "\n".join([restored, periodic, periodic_commit, final, final_commit])
    (event,) = events.exit_events("app", ExitCode.CHECKPOINTED, message)
    assert (event.reason, event.detail) == ("CheckpointCommitted", "g3")
    assert event.message == "container app: checkpoint generation g3, 2.0 MiB"

    failed = "\n".join(
        [
            _line(phase="dump", outcome="failed", reason="sigterm", error="io_uring"),
            _line(phase="exit", outcome="not-checkpointed", code=203, app_code=0),
        ]
    )
    (event,) = events.exit_events("app", ExitCode.CHECKPOINT_FAILED, failed)
    assert (event.type, event.reason) == ("Warning", "CheckpointFailed")
    assert "io_uring" in event.message
    assert "exited with 0" in event.message

    agent = _line(phase="start", outcome="failed", error="store belongs to 'web'")
    (event,) = events.exit_events("app", ExitCode.AGENT_FAILURE, agent)
    assert (event.reason, event.message) == ("AgentFailed", "container app: store belongs to 'web'")

    # the application's own exit (or a death by signal) is no fact of ours
    assert events.exit_events("app", 0, restored) == []
    assert events.exit_events("app", 143, final) == []


def test_terminated_instances_of_checkpointed_containers_only() -> None:
    status = {
        "containerStatuses": [
            {
                "name": "app",
                "state": {"terminated": {"message": "m1", "containerID": "c1", "exitCode": 202}},
            },
            {"name": "proxy", "state": {"terminated": {"message": "m2", "containerID": "c2"}}},
            {
                "name": "app2",
                "lastState": {"terminated": {"message": "m3", "containerID": "c3", "exitCode": 1}},
                "state": {"running": {"startedAt": "t"}},
                "containerID": "c4",
            },
        ]
    }
    assert list(events.terminated_containers(status, ["app", "app2"])) == [
        events.Terminated("app", "c1", 202, "m1"),
        events.Terminated("app2", "c3", 1, "m3"),
    ]
    assert list(events.started_containers(status, ["app2"])) == [("app2", "c4")]


def test_orphans_are_claims_without_owner() -> None:
    owned = {"metadata": {"name": "a", "ownerReferences": [{"uid": "x"}]}}
    orphan = {"metadata": {"name": "b"}}
    assert orphans([owned, orphan]) == [orphan]


def test_generated_certificate_covers_the_service() -> None:
    names = certs.service_names("podckpt-webhook", "podckpt-system")
    bundle = certs.generate([*names, "127.0.0.1"])
    assert certs.usable(bundle, names)
    cert = x509.load_pem_x509_certificate(bundle.cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "podckpt-webhook.podckpt-system.svc" in sans.get_values_for_type(x509.DNSName)
    ca = x509.load_pem_x509_certificate(bundle.ca)
    cert.verify_directly_issued_by(ca)


def test_certificate_for_other_names_or_expiring_is_not_usable() -> None:
    bundle = certs.generate(["a.svc"])
    assert not certs.usable(bundle, ["b.svc"])
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3640)
    assert not certs.usable(bundle, ["a.svc"], now=later)
    assert not certs.usable(certs.CertBundle(b"x", b"y", b"z"), ["a.svc"])


def test_a_log_head_without_a_start_outcome_is_read_again() -> None:
    def line(phase: str, outcome: str) -> str:
        return json.dumps({"agent": "podckpt", "phase": phase, "outcome": outcome})

    assert not events.start_decided("")
    assert not events.start_decided(line("settings", "warning"))
    assert not events.start_decided(line("restore", "failed"))  # older generations follow
    for phase, outcome in (
        ("restore", "ok"),
        ("restore", "fallback-fresh"),
        ("restore", "skipped"),
        ("fresh-start", "ok"),
        ("start", "failed"),
        ("start", "dormant"),
    ):
        assert events.start_decided("app output\n" + line(phase, outcome)), (phase, outcome)


def test_connections_closed_at_restore_is_a_warning_event() -> None:
    line = (
        '{"agent":"podckpt","phase":"restore","outcome":"ok","generation":"g1",'
        '"connections_closed":"the restore with tcp-established failed (bind); restored with'
        ' tcp-close"}'
    )
    got = [(e.type, e.reason) for e in events.start_events("web", line)]
    assert got == [("Normal", "Restored"), ("Warning", "ConnectionsClosed")]
    assert "tcp-established" in events.start_events("web", line)[1].message
