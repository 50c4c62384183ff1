"""`kubectl podckpt checkpoint POD [-c CONTAINER]`: a checkpoint now; the application runs on.

The agent in the container serves a control socket; `podckpt-agent checkpoint` (the agent's
own binary, run with `kubectl exec`) asks it for a checkpoint and waits for the commit. Then
the pod gets the annotation `<domain>/checkpoint-requested` (the time), which tells the
controller to read the agent's new lines and record the checkpoint on the PVC, as it does for
the checkpoints it sees in termination messages.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import Any

from .inspect import Domain, _meta
from .kubectl import Kubectl, KubectlError

DEFAULT_AGENT = "/.podckpt/bin/podckpt-agent"
_COMMITTED = re.compile(r"checkpoint (\S+) committed")


class CheckpointError(Exception):
    pass


def run(
    kubectl: Kubectl, pod_name: str, container: str | None, domain: Domain, timeout: float
) -> dict[str, Any]:
    pod = kubectl.get("pod", pod_name)
    annotations = _meta(pod, "annotations")
    if domain.key("injected") not in annotations:
        raise CheckpointError(
            f"pod {pod_name} carries no podckpt agent (see: kubectl podckpt explain {pod_name})"
        )
    checkpointed = [c for c in annotations.get(domain.key("containers"), "").split(",") if c]
    if container is None:
        if len(checkpointed) != 1:
            raise CheckpointError(
                f"pod {pod_name} has {len(checkpointed)} checkpointed containers"
                f" ({', '.join(checkpointed)}): name one with -c"
            )
        container = checkpointed[0]
    elif container not in checkpointed:
        raise CheckpointError(
            f"container {container} of pod {pod_name} is not checkpointed"
            f" (checkpointed: {', '.join(checkpointed) or 'none'})"
        )
    spec = next(c for c in pod["spec"]["containers"] if c["name"] == container)
    agent = (spec.get("command") or [DEFAULT_AGENT])[0]
    proc = kubectl.run(
        "exec",
        pod_name,
        "-c",
        container,
        "--",
        agent,
        "checkpoint",
        "--container",
        container,
        "--timeout",
        str(int(timeout)),
        timeout=timeout + 30,
        check=False,
    )
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise CheckpointError(f"checkpoint of {pod_name}/{container} failed: {output}")
    found = _COMMITTED.search(output)
    result = {
        "pod": pod_name,
        "container": container,
        "generation": found[1] if found else None,
        "output": output,
        "recorded": True,
    }
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        kubectl.run(
            "annotate",
            "pod",
            pod_name,
            f"{domain.key('checkpoint-requested')}={now}",
            "--overwrite",
        )
    except KubectlError as exc:
        # The checkpoint is committed all the same; only its summary on the PVC waits.
        result["recorded"] = False
        result["warning"] = (
            f"could not annotate the pod ({exc}): the controller records this checkpoint on"
            " the volume only when it next reads the agent's lines"
        )
    return result


def text(doc: Mapping[str, Any]) -> str:
    note = f"\nwarning: {doc['warning']}" if doc.get("warning") else ""
    return (
        f"pod {doc['pod']} container {doc['container']}: checkpoint"
        f" {doc['generation'] or '(generation unknown)'} committed; the application runs on{note}"
    )
