"""The agent acts on every one of its keys when it comes from the namespace (issue 10): the
webhook hands the namespace's keys over in `--namespace-defaults` (tests/operator proves
that, per key, against the real API server); here the agent, with real CRIU, does what each
says while the pod itself carries none of them (an empty labels file, as in a pod of a
namespace with `memverge.ai/checkpoint-mode=true`)."""

from __future__ import annotations

import pytest
from agent_harness import AgentHarness, counts, phases, stop_and_wait, wait_count

from podckpt.agent.capabilities import REQUIRED_CAPABILITIES
from podckpt.agent.exitcodes import CHECKPOINTED
from podckpt.api import contract
from podckpt.devtools.sandbox import Sandbox, wait_for

pytestmark = pytest.mark.criu

P = "memverge.ai/"
COUNTER = ["python3", "/apps/counter.py"]


def _start(
    agent: AgentHarness,
    argv: list[str],
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
    **kwargs: object,
) -> Sandbox:
    defaults = contract.namespace_defaults_text(labels, annotations or {})
    return agent.start(
        argv,
        labels={},
        annotations={},
        agent_args=[contract.NAMESPACE_DEFAULTS_OPTION, defaults],
        **kwargs,  # type: ignore[arg-type]
    )


def _committed(agent: AgentHarness) -> list[str]:
    generations = agent.app_store / "generations"
    return sorted(p.name for p in generations.iterdir() if (p / "manifest.json").exists())


def test_mode_interval_keep_diagnosis_and_files_from_the_namespace(agent: AgentHarness) -> None:
    labels = {
        f"{P}checkpoint-mode": "true",
        f"{P}checkpoint-interval": "10s",
        f"{P}checkpoint-keep": "1",
        f"{P}checkpoint-diagnosis": "true",
    }
    annotations = {f"{P}checkpoint-files": "/etc/app.conf"}
    first = _start(agent, COUNTER, labels, annotations)
    wait_count(first, 3)
    first.exec(["sh", "-c", "echo tuned > /etc/app.conf"])
    # checkpoint-interval: periodic generations appear; checkpoint-keep 1: one stays
    assert wait_for(lambda: len(phases(first, "commit", "ok")) >= 2, 40), first.stderr_text()[
        -2000:
    ]
    assert [d["reason"] for d in phases(first, "dump", "ok")][:2] == ["periodic", "periodic"]
    assert len(_committed(agent)) == 1
    # checkpoint-mode: SIGTERM checkpoints (the pod's own labels file says nothing)
    assert stop_and_wait(first) == CHECKPOINTED
    final = agent.latest()
    reached = counts(first)[-1]

    second = _start(agent, COUNTER, labels, annotations)
    assert wait_for(lambda: phases(second, "restore", "ok"), 30), second.stderr_text()[-2000:]
    assert wait_count(second, 3)[0] > reached
    # checkpoint-files: the file came back
    assert second.exec(["cat", "/etc/app.conf"]).stdout == b"tuned\n"
    # checkpoint-diagnosis: the restored generation is kept, marked, with its logs
    kept = agent.app_store / "generations" / str(final)
    assert wait_for((kept / "RESTORED").exists, 20)
    assert (kept / "restore.log").exists()
    second.destroy()


def test_restore_policy_from_the_namespace(agent: AgentHarness) -> None:
    on = {f"{P}checkpoint-mode": "true"}
    first = _start(agent, COUNTER, on)
    wait_count(first, 3)
    assert stop_and_wait(first) == CHECKPOINTED
    second = _start(agent, COUNTER, {**on, f"{P}restore-policy": "fresh"})
    assert wait_count(second, 3)[0] == 1
    assert phases(second, "restore", "skipped")[0]["why"] == "restore-policy is fresh"
    second.destroy()


def test_checkpoint_mode_false_of_the_namespace_is_off(agent: AgentHarness) -> None:
    # an injection namespace whose default is off: SIGTERM goes to the application
    box = _start(agent, ["python3", "/apps/exit_on_signal.py"], {f"{P}checkpoint-mode": "false"})
    wait_count(box, 3)
    assert stop_and_wait(box) == 0
    assert phases(box, "sigterm", "forwarded")[0]["checkpoint_mode"] is False


def test_irmap_scan_paths_from_the_namespace(agent: AgentHarness) -> None:
    # Without CAP_DAC_READ_SEARCH an inotify watch dumps only with the key
    # (test_irmap_scan_paths_let_an_inotify_watch_survive shows the failure without it).
    from test_environment import RUNTIME_DEFAULT  # noqa: PLC0415 - the shared capability list

    caps = sorted({*RUNTIME_DEFAULT, *REQUIRED_CAPABILITIES})
    labels = {f"{P}checkpoint-mode": "true"}
    annotations = {f"{P}irmap-scan-paths": "/srv"}
    argv = ["python3", "/apps/inotify_app.py", "/srv"]
    first = _start(agent, argv, labels, annotations, capabilities=caps)
    assert wait_for(lambda: "watching" in first.stdout_text(), 20)
    assert stop_and_wait(first) == CHECKPOINTED, first.stderr_text()[-2000:]
    second = _start(agent, argv, labels, annotations, capabilities=caps)
    assert wait_for(lambda: phases(second, "restore", "ok"), 20), second.stderr_text()[-2000:]
    second.exec(["touch", "/srv/after"])
    assert wait_for(lambda: "created after" in second.stdout_text(), 10)
    second.destroy()


def test_bad_namespace_defaults_fail_in_one_line(agent: AgentHarness) -> None:
    box = agent.start(COUNTER, agent_args=[contract.NAMESPACE_DEFAULTS_OPTION, "{nope"])
    assert box.wait(20) == contract.ExitCode.AGENT_FAILURE
    error = phases(box, "start", "failed")[0]["error"]
    assert error.startswith("--namespace-defaults: not JSON")
