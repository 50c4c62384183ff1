"""What a workload's user must see about its pods: Events on the workload.

Admission answers go to whoever created the pod. For a workload's pod that is the workload's
controller, not the user: a refused pod shows up only in the ReplicaSet's, StatefulSet's or
Job's `FailedCreate` events (for a Deployment, on a ReplicaSet the user never looks at), and
admission warnings about a pod of a Deployment reach nobody. So the webhook also posts them
as Events on the top-level workload (the Deployment, the StatefulSet, the Job): a refusal as
`CheckpointRefused`, each mistake in the keys (unknown key, a label/annotation conflict, keys
ignored, a Pod Security level that will refuse the pod) as `CheckpointWarning`.

This is the webhook's one side effect (`sideEffects: NoneOnDryRun`): never for a dry-run, and
after the admission response is computed, in a task, so it adds nothing to admission latency.
Each Event is named after its fact (workload uid, reason, message), so the ReplicaSet
controller's retries, the other webhook replica and restarts do not repeat it; a local set
spares the POST.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Mapping
from typing import Any

from podckpt.operator.domain.identity import Owner, controller_owner, top_level_owner
from podckpt.operator.kube.api import (
    ApiError,
    KubeAPI,
    event_manifest,
    namespaced,
    post_event_once,
)

logger = logging.getLogger(__name__)

COMPONENT = "podckpt-webhook"
REFUSED = "CheckpointRefused"
WARNING = "CheckpointWarning"

#: Controllers whose pods have a workload to report on (others: the pod's creator sees it).
_KINDS = frozenset({"ReplicaSet", "StatefulSet", "Job"})


class Reporter:
    """Posts Events on workloads in the background; remembers what it posted."""

    def __init__(self, size: int = 4096) -> None:
        self._posted: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._size = size
        self._tasks: set[asyncio.Task[None]] = set()

    def report(
        self,
        api: KubeAPI | None,
        namespace: str,
        pod: Mapping[str, Any],
        reason: str,
        messages: list[str],
    ) -> None:
        """Post `messages` about `pod` on its workload, later (never blocks admission)."""
        if api is None or not messages or controller_owner(pod) is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._post(api, namespace, pod, reason, messages)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the posts in flight (shutdown, tests)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _remember(self, fact: str) -> bool:
        if fact in self._posted:
            return False
        self._posted[fact] = None
        if len(self._posted) > self._size:
            self._posted.popitem(last=False)
        return True

    async def _post(
        self,
        api: KubeAPI,
        namespace: str,
        pod: Mapping[str, Any],
        reason: str,
        messages: list[str],
    ) -> None:
        try:
            workload = await _workload(api, namespace, pod)
            if workload is None:
                return
            for message in messages:
                fact = f"{workload.uid}/{reason}/{message}"
                if not self._remember(fact):
                    continue
                event = event_manifest(
                    {
                        "apiVersion": workload.api_version,
                        "kind": workload.kind,
                        "metadata": {
                            "name": workload.name,
                            "namespace": namespace,
                            "uid": workload.uid,
                        },
                    },
                    type="Warning",
                    reason=reason,
                    message=f"pods of this workload: {message}",
                    component=COMPONENT,
                    fact=fact,
                )
                await post_event_once(api, event)
        except ApiError as exc:
            logger.warning("could not report %s in %s: %s", reason, namespace, exc)


async def _workload(api: KubeAPI, namespace: str, pod: Mapping[str, Any]) -> Owner | None:
    """The pod's top-level workload: a ReplicaSet's Deployment, else its own controller."""
    owner = controller_owner(pod)
    if owner is None or owner.kind not in _KINDS:
        return None
    replicaset = None
    if owner.kind == "ReplicaSet":
        replicaset = await api.get(namespaced("/apis/apps/v1/replicasets", namespace, owner.name))
    return top_level_owner(owner, replicaset)
