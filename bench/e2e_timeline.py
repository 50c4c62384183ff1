"""Where the time of a pod replacement goes, for bench/e2e_restore.py.

Kubernetes' timestamps are in whole seconds; these are taken as things happen instead:

- pod watch (`kubectl get pods -w --output-watch-events -o json`), stamped on arrival: the
  old pod gone, the new pod created, scheduled;
- containerd's event stream (`ctr events` on the node, nanosecond timestamps): each task's
  start and exit, i.e. the pod sandboxes, the bundle init container and the application
  container of the old and the new pod (container ids mapped to pod and container through
  the CRI labels afterwards);
- the agents' own lines: the old pod's exit, the new pod's process start
  (`since_process_start_s`) and `restore ok`.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from podckpt.devtools.cluster import containerd
from podckpt.devtools.cluster.cluster import Cluster

KIND_LABEL = "io.cri-containerd.kind"
POD_UID_LABEL = "io.kubernetes.pod.uid"
CONTAINER_LABEL = "io.kubernetes.container.name"


class _Reader(threading.Thread):
    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.items: list[tuple[float, str]] = []
        self.start()

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.items.append((time.time(), line))

    def stop(self) -> list[tuple[float, str]]:
        self.proc.terminate()
        self.proc.wait(10)
        self.join(5)
        return self.items


class Timeline:
    """Start before the disruption, `finish()` once the restored program runs."""

    def __init__(self, cluster: Cluster, namespace: str, pod: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.pod = pod
        node = cluster.state.nodes[0]
        self.node_path = Path(node.path)
        sock = str(containerd.socket(self.node_path))
        self._ctr = ["ctr", "--address", sock, "--namespace", "k8s.io"]
        self._events = _Reader([*self._ctr, "events"])
        self._watch = _Reader(
            [str(cluster.bin_dir / "kubectl"), "get", "pods", "-n", namespace, "-w",
             "--output-watch-events", "-o", "json", "--field-selector", f"metadata.name={pod}"],
            env=cluster.env,
        )  # fmt: skip
        time.sleep(0.5)

    def finish(self, old_uid: str) -> dict[str, float]:
        """Unix times of each step (old = the deleted pod, new = its replacement)."""
        time.sleep(0.5)
        events = self._events.stop()
        watch = self._watch.stop()
        out: dict[str, float] = {}
        for stamp, kind, obj in _watch_objects(watch):
            meta = obj.get("metadata") or {}
            uid = meta.get("uid")
            if uid == old_uid and kind == "DELETED":
                out.setdefault("old_pod_gone", stamp)
            elif uid != old_uid:
                out.setdefault("new_pod_added", stamp)
                if (obj.get("spec") or {}).get("nodeName"):
                    out.setdefault("new_pod_scheduled", stamp)
        owners = self._owners({cid for _, _, cid in _task_events(events)})
        for stamp, topic, cid in _task_events(events):
            uid, container = owners.get(cid, (None, None))
            if uid is None:
                continue
            who = "old" if uid == old_uid else "new"
            step = {"/tasks/start": "start", "/tasks/exit": "exit"}[topic]
            out.setdefault(f"{who}_{container}_{step}", stamp)
        return out

    def _owners(self, ids: set[str]) -> dict[str, tuple[str, str]]:
        owners = {}
        for cid in ids:
            argv = [*self._ctr, "containers", "info", cid]
            done = subprocess.run(argv, check=False, capture_output=True, text=True)
            if done.returncode != 0:
                continue
            labels = (json.loads(done.stdout).get("Labels")) or {}
            uid = labels.get(POD_UID_LABEL)
            if uid is None:
                continue
            kind = labels.get(KIND_LABEL)
            owners[cid] = (uid, "sandbox" if kind == "sandbox" else labels.get(CONTAINER_LABEL))
        return owners


def _task_events(events: list[tuple[float, str]]) -> list[tuple[float, str, str]]:
    """(time, topic, container id) of task starts and exits, in containerd's own time."""
    out = []
    for _, line in events:
        parts = line.split(" ")
        topic_at = next((i for i, p in enumerate(parts) if p.startswith("/tasks/")), None)
        if topic_at is None or len(parts) < 3:
            continue
        topic = parts[topic_at]
        if topic not in ("/tasks/start", "/tasks/exit"):
            continue
        try:
            body = json.loads(" ".join(parts[topic_at + 1 :]))
        except ValueError:
            continue
        cid = body.get("container_id") or body.get("id")
        if not cid:
            continue
        when = dt.datetime.fromisoformat(f"{parts[0]} {parts[1][:15]}+00:00").timestamp()
        if topic == "/tasks/exit" and body.get("id") not in (None, cid):
            continue  # an exec's exit, not the container's
        out.append((when, topic, cid))
    return out


def _watch_objects(watch: list[tuple[float, str]]) -> list[tuple[float, str, dict[str, Any]]]:
    """The watch's JSON objects (pretty-printed, one after the other), with arrival times."""
    decoder = json.JSONDecoder()
    out = []
    buffer, stamp = "", 0.0
    for when, line in watch:
        if not buffer:
            stamp = when
        buffer += line
        try:
            obj, end = decoder.raw_decode(buffer.strip())
        except ValueError:
            continue
        buffer = buffer.strip()[end:]
        if isinstance(obj, dict) and "object" in obj:
            out.append((stamp, str(obj.get("type")), obj["object"]))
    return out
