"""The agent's own exit codes, read by the kubelet, Jobs and the controller
(`podckpt.api.contract`, "Exit codes")."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """The agent's own exit codes; otherwise it exits with the application's code, or 128+N
    when signal N killed the application, so that the kubelet, Jobs and `restartPolicy` see
    the application as if the agent were not there.

    They lie outside 0-2 (conventional results), 126-127 (shell "cannot execute") and 128-192
    (128+signal), so they never look like an application's own result or death by a signal;
    none is 0, so no Job counts a checkpointed or failed pod as completed.
    """

    #: The agent itself failed: bad command line, bad keys, unusable store, missing or too old
    #: CRIU, missing capabilities, a seccomp filter on the agent, the application not
    #: executable.
    AGENT_FAILURE = 200
    #: `restore-policy: strict` and no generation could be restored.
    RESTORE_FAILURE = 201
    #: SIGTERM: the checkpoint was committed and the application stopped (it will be restored
    #: by the pod that replaces this one). Never 0: a Job counts a pod that exits 0 as a
    #: completion, and a deleted Job pod that was checkpointed has not completed.
    CHECKPOINTED = 202
    #: SIGTERM: the checkpoint was refused or failed, so the application got the SIGTERM and
    #: stopped; the previous checkpoint (if any) is still the one a new pod restores. The
    #: application's own exit code is in the termination message (`exit` line, `app_code`).
    CHECKPOINT_FAILED = 203

    @property
    def meaning(self) -> str:
        return _EXIT_MEANINGS[self]


#: One line each, for `podckpt-agent --help` and the controller's Events.
_EXIT_MEANINGS = {
    ExitCode.AGENT_FAILURE: "agent failure (arguments, keys, store, CRIU, capabilities)",
    ExitCode.RESTORE_FAILURE: "restore-policy strict: no checkpoint could be restored",
    ExitCode.CHECKPOINTED: "SIGTERM: checkpoint committed, application stopped",
    ExitCode.CHECKPOINT_FAILED: "SIGTERM: no checkpoint (refused or failed), application stopped",
}
