"""Exit codes of `podckpt-agent run` (defined in the contract, `podckpt.api.contract.ExitCode`,
because the operator reads them too: it must not import the agent).

The agent exits with the application's own code, or 128+N when signal N killed it; the codes
below are its own (see `ExitCode` for why these numbers).
"""

from __future__ import annotations

import os

from podckpt.api.contract import ExitCode

AGENT_FAILURE = ExitCode.AGENT_FAILURE
RESTORE_FAILURE = ExitCode.RESTORE_FAILURE
CHECKPOINTED = ExitCode.CHECKPOINTED
CHECKPOINT_FAILED = ExitCode.CHECKPOINT_FAILED

HELP = (
    "exit codes:\n  N          the application's own exit code (after a fresh start or a restore)\n"
)
HELP += "  128+S      the application was killed by signal S\n"
for _code in ExitCode:
    HELP += f"  {int(_code):<10} {_code.meaning}\n"


def from_wait_status(status: int) -> int:
    """The shell convention: the exit code, or 128+signal for a death by signal."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code
