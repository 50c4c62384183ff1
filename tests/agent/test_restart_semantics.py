"""A checkpoint comes back only in a new pod of the same workload revision (issue 10): a
container restarted inside its pod starts fresh (SamePod), a pod of another revision starts
fresh (NewRevision), a new pod of the same revision restores. The pod's uid and revision come
from the webhook (PODCKPT_POD_UID, --revision), as in a pod."""

from __future__ import annotations

import json

import pytest
from agent_harness import AgentHarness, counts, phases, stop_and_wait, wait_count

from podckpt.agent.exitcodes import CHECKPOINTED
from podckpt.devtools.sandbox import Sandbox, wait_for

pytestmark = pytest.mark.criu

COUNTER = ["python3", "/apps/counter.py"]


def _start(
    agent: AgentHarness, uid: str, revision: str = "controller-revision-hash=db-1"
) -> Sandbox:
    """The container of pod `uid`, created for workload revision `revision`."""
    return agent.start(COUNTER, env={"PODCKPT_POD_UID": uid}, agent_args=["--revision", revision])


def test_container_restarted_inside_its_pod_starts_fresh(agent: AgentHarness) -> None:
    # A liveness probe failure or `kubectl exec ... kill 1`: the kubelet's SIGTERM looks like
    # a deletion's, so the agent dumps; the container restarted in the same pod must not
    # resume the process the restart was meant to cure.
    first = _start(agent, "pod-a")
    wait_count(first, 5)
    assert stop_and_wait(first) == CHECKPOINTED
    generation = agent.latest()
    manifest = json.loads(
        (agent.app_store / "generations" / str(generation) / "manifest.json").read_text()
    )
    assert manifest["origin"]["pod_uid"] == "pod-a"
    assert manifest["origin"]["boot_id"]
    assert manifest["workload"]["revision"] == "controller-revision-hash=db-1"

    restarted = _start(agent, "pod-a")
    assert wait_count(restarted, 3)[0] == 1, "resumed inside the same pod"
    (skipped,) = phases(restarted, "restore", "skipped")
    assert (skipped["cause"], skipped["generation"]) == ("SamePod", generation)
    assert "restarted inside" in skipped["why"]
    assert not phases(restarted, "restore", "failed")
    # the generation is the past of this pod: retired, so no later start restores it either
    assert wait_for(lambda: not (agent.app_store / "generations" / str(generation)).exists(), 10)

    # Killed without SIGTERM (an OOM kill of the whole container): the periodic or requested
    # checkpoint of this pod is not restored either.
    agent.checkpoint(restarted)
    restarted.kill()
    restarted.wait(20)
    again = _start(agent, "pod-a")
    assert wait_count(again, 3)[0] == 1
    assert phases(again, "restore", "skipped")[0]["cause"] == "SamePod"
    again.destroy()


def test_new_pod_restores_and_new_revision_starts_fresh(agent: AgentHarness) -> None:
    first = _start(agent, "pod-a")
    wait_count(first, 5)
    assert stop_and_wait(first) == CHECKPOINTED
    reached = counts(first)[-1]

    # the replacement pod (another uid, same revision) resumes it
    second = _start(agent, "pod-b")
    assert wait_for(lambda: phases(second, "restore", "ok"), 20), second.stderr_text()[-2000:]
    assert wait_count(second, 3)[0] > reached
    assert stop_and_wait(second) == CHECKPOINTED

    # a pod of the next revision (rolling update, changed env) starts fresh, and says why
    third = _start(agent, "pod-c", "controller-revision-hash=db-2")
    assert wait_count(third, 3)[0] == 1
    (skipped,) = phases(third, "restore", "skipped")
    assert skipped["cause"] == "NewRevision"
    assert (
        "'controller-revision-hash=db-1', this pod runs 'controller-revision-hash=db-2'"
        in (skipped["why"])
    )
    third.destroy()
