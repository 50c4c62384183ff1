"""The user guide's Job podFailurePolicy ignores exactly the agent's checkpoint exit code (and
DisruptionTarget): when the exit code changes, this fails until the guide follows."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from podckpt.agent.exitcodes import CHECKPOINTED

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "user-guide.md"


def test_guide_pod_failure_policy_uses_the_checkpoint_exit_code() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), re.S)
    (policy,) = [yaml.safe_load(b)["spec"] for b in blocks if "podFailurePolicy" in b]
    rules = policy["podFailurePolicy"]["rules"]
    codes = [r["onExitCodes"] for r in rules if "onExitCodes" in r]
    assert codes == [{"containerName": "app", "operator": "In", "values": [CHECKPOINTED]}]
    conditions = [r["onPodConditions"] for r in rules if "onPodConditions" in r]
    assert conditions == [[{"type": "DisruptionTarget"}]]
    assert all(r["action"] == "Ignore" for r in rules)
    assert policy["backoffLimit"] == 0
