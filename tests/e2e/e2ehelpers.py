"""Helpers of the end-to-end tests: workloads of the counter, and reading its progress."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from podckpt.devtools.cluster.cluster import Cluster

P = "memverge.ai/"
T = TypeVar("T")

#: The counter: a shell loop (state only in the shell's memory) printing to stdout.
#: COUNT_TO ends it (Jobs complete); 0 counts forever.
#: A random tag chosen at the start (also only in memory) tells one process tree from another.
COUNTER = (
    # PID 1 ignores SIGTERM unless it handles it: a container without the agent would
    # otherwise wait out its grace period.
    "trap 'exit 143' TERM; "
    'i=0; n="${COUNT_TO:-0}"; tag=$RANDOM$RANDOM; '
    # STATE_FILE: a file of the container's own filesystem (for checkpoint-files)
    'if [ -n "$STATE_FILE" ]; then echo "$tag" > "$STATE_FILE"; fi; '
    'while [ "$n" = 0 ] || [ "$i" -lt "$n" ]; do '
    'i=$((i+1)); echo "count $i $tag"; sleep 0.2; done'
)
_COUNT = re.compile(r"^count (\d+) (\d+)$", re.MULTILINE)


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 120) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def container(
    image: str, name: str = "app", count_to: int = 0, state_file: str = ""
) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", COUNTER],
        "env": [
            {"name": "COUNT_TO", "value": str(count_to)},
            {"name": "STATE_FILE", "value": state_file},
        ],
        "resources": {"limits": {"memory": "64Mi"}},
    }


def apply(cluster: Cluster, namespace: str, obj: dict[str, Any]) -> str:
    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))
    return out.stdout + out.stderr


def get(cluster: Cluster, namespace: str, *what: str) -> Any:
    out = cluster.kubectl("get", "-n", namespace, *what, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout else None


def pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    found = get(cluster, namespace, "pods", "-l", selector)
    return list(found["items"]) if found else []


def logs(cluster: Cluster, namespace: str, pod: str, container: str = "app") -> str:
    return cluster.kubectl("logs", "-n", namespace, pod, "-c", container, check=False).stdout


def counts(text: str) -> list[int]:
    return [int(m[0]) for m in _COUNT.findall(text)]


def tags(text: str) -> set[str]:
    """The process trees (random tags) that printed to this log."""
    return {m[1] for m in _COUNT.findall(text)}


def running_pod(cluster: Cluster, namespace: str, selector: str, exclude: set[str]) -> str:
    """Name of a Running, not terminating pod matching `selector` whose uid is not excluded."""

    def check() -> str | None:
        for pod in pods(cluster, namespace, selector):
            meta = pod["metadata"]
            if meta["uid"] in exclude or meta.get("deletionTimestamp"):
                continue
            if pod["status"].get("phase") == "Running":
                return f"{meta['name']}/{meta['uid']}"
        return None

    return wait_for(f"a new running pod of {selector}", check, 180)


def counted(cluster: Cluster, namespace: str, pod: str, at_least: int, c: str = "app") -> int:
    """Wait until the pod's counter printed `at_least`; return its last count."""

    def check() -> int | None:
        seen = counts(logs(cluster, namespace, pod, c))
        return seen[-1] if seen and seen[-1] >= at_least else None

    return wait_for(f"{pod} counting to {at_least}", check, 120)


def events(cluster: Cluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    found = get(cluster, namespace, "events")
    return [e for e in (found or {"items": []})["items"] if e.get("reason") == reason]


def phase_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{") and '"agent":"podckpt"' in line:
            out.append(json.loads(line))
    return out
