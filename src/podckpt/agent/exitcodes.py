"""Exit codes of `podckpt-agent run`.

The agent exits with the application's own code, or 128+N when signal N killed it, so that the
kubelet, Jobs and `restartPolicy` see the application as if the agent were not there. The codes
below are reserved for the agent's own failures; they lie outside 0-2 (conventional results),
126-127 (shell "cannot execute") and 128-192 (128+signal), so they never look like an
application's death by a signal.
"""

from __future__ import annotations

import os

#: SIGTERM: the application was checkpointed and stopped. 128+SIGTERM, what the kubelet sees
#: from an application stopped by SIGTERM, and never 0: a Job counts a pod that exits 0 as a
#: completion, and a deleted Job pod that was checkpointed has not completed (its replacement
#: restores it).
CHECKPOINTED = 143
#: The agent itself failed: bad command line, bad keys, unusable store, missing or too old
#: CRIU, missing capabilities, a seccomp filter on the agent, the application not executable.
AGENT_FAILURE = 200
#: `restore-policy: strict` and no generation could be restored.
RESTORE_FAILURE = 201

HELP = f"""\
exit codes:
  N          the application's own exit code (after a fresh start or a restore)
  128+S      the application was killed by signal S
  {CHECKPOINTED}        SIGTERM: the application was checkpointed and stopped
  {AGENT_FAILURE}        agent failure (bad arguments or keys, unusable store, CRIU missing or
             older than 4.2, missing capability, seccomp filter on the agent)
  {RESTORE_FAILURE}        restore-policy strict: no checkpoint could be restored
"""


def from_wait_status(status: int) -> int:
    """The shell convention: the exit code, or 128+signal for a death by signal."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code
