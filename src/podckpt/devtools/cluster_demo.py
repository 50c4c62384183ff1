"""The README's main job on a real cluster: label a workload, delete its pod, watch it resume.

    hack/cluster.sh up && python -m podckpt.devtools.cluster_demo    # what hack/demo.sh runs

On the running local single-node cluster (`hack/cluster.sh up`, state in
$PODCKPT_CLUSTER_DIR) it installs the operator in it from `config/`
(`podckpt.devtools.operator_install`), runs a one-replica StatefulSet whose pod template
carries `memverge.ai/checkpoint-mode: "true"` (a busybox shell counting in memory), deletes
its pod and shows the new pod's log going on from where the old one stopped, with the agent's
phase lines and the Events. The cluster stays up for you to play with (`eval "$(hack/cluster.sh
env)"`); `hack/demo.sh down` (= `hack/cluster.sh down`) removes everything.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from podckpt.devtools import operator_install
from podckpt.devtools.bundlecheck.roots import busybox_root
from podckpt.devtools.cluster.__main__ import _state_dir
from podckpt.devtools.cluster.cluster import TIER_NODE, Cluster

NAMESPACE = "demo"
IMAGE = "podckpt.local/demo-counter:1"
COUNTER = "trap 'exit 143' TERM; i=0; while true; do i=$((i+1)); echo \"count $i\"; sleep 0.5; done"


def _say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def _manifest() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "counter", "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "serviceName": "counter",
            "selector": {"matchLabels": {"app": "counter"}},
            "template": {
                "metadata": {"labels": {"app": "counter", "memverge.ai/checkpoint-mode": "true"}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["/bin/sh", "-c", COUNTER],
                            "resources": {"limits": {"memory": "64Mi"}},
                        }
                    ]
                },
            },
        },
    }


def _pod(cluster: Cluster) -> dict[str, Any]:
    out = cluster.kubectl("get", "pod", "-n", NAMESPACE, "counter-0", "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _running(cluster: Cluster, not_uid: str = "", timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pod = _pod(cluster)
        meta, status = pod.get("metadata", {}), pod.get("status", {})
        running = [s for s in status.get("containerStatuses", []) if "running" in s["state"]]
        if running and meta.get("uid") != not_uid and not meta.get("deletionTimestamp"):
            return str(meta["uid"])
        time.sleep(0.5)
    raise RuntimeError("demo: the pod did not start (see `kubectl describe pod -n demo`)")


def _counts(cluster: Cluster) -> tuple[list[str], list[str]]:
    text = cluster.kubectl("logs", "-n", NAMESPACE, "counter-0", check=False).stdout
    lines = text.splitlines()
    return [x for x in lines if x.startswith("count ")], [x for x in lines if x.startswith("{")]


def _wait_counts(cluster: Cluster, at_least: int) -> list[str]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        counts, _ = _counts(cluster)
        if len(counts) >= at_least:
            return counts
        time.sleep(0.5)
    raise RuntimeError("demo: the counter does not count")


def up() -> int:
    cluster = Cluster(_state_dir())
    if not cluster.running(TIER_NODE):
        _say("no cluster runs: start it with hack/cluster.sh up (hack/demo.sh does)")
        return 1
    _say("installing the podckpt operator in it from config/ (images built without Docker)")
    operator_install.install(cluster)
    cluster.load_image(busybox_root(), IMAGE, push=False)
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(_manifest()))
    _say("StatefulSet counter, pod template labelled memverge.ai/checkpoint-mode=true")
    uid = _running(cluster)
    counts = _wait_counts(cluster, 8)
    _say(f"old pod counter-0 is at: {counts[-1]}")
    _say("kubectl delete pod counter-0   (SIGTERM: the agent checkpoints the counter)")
    cluster.kubectl("delete", "pod", "-n", NAMESPACE, "counter-0", "--wait=false")
    _running(cluster, not_uid=uid)
    new = _wait_counts(cluster, 3)
    _, phases = _counts(cluster)
    _say(f"new pod counter-0 goes on: {new[0]}, {new[1]}, {new[2]} ...")
    for line in phases:
        record = json.loads(line)
        _say(f"  agent: phase {record.get('phase')} {record.get('outcome')}")
    time.sleep(3)
    events = cluster.kubectl(
        "get",
        "events",
        "-n",
        NAMESPACE,
        "--field-selector",
        "involvedObject.name=counter-0",
        "-o",
        "custom-columns=REASON:.reason,MESSAGE:.message",
        check=False,
    ).stdout
    for line in events.splitlines():
        reason = line.split(" ", 1)[0]
        if reason in ("Injected", "VolumeProvisioned", "CheckpointCommitted", "Restored"):
            _say(f"  event: {line}")
    ok = int(new[0].split()[1]) > int(counts[-1].split()[1])
    _say("resumed: the count went on" if ok else "NOT resumed: the count started again")
    _say('the cluster stays up: eval "$(hack/cluster.sh env)"; kubectl -n demo logs counter-0')
    _say("tear it down with: hack/demo.sh down")
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "up"
    if what == "up":
        return up()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
