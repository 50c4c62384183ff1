"""The README's main job on a real two-node cluster: drain the node, the pod carries on on the
other one.

    hack/cluster.sh up --nodes 2 && python -m podckpt.devtools.cluster_demo   # = hack/demo.sh

On the running local cluster (`hack/cluster.sh up --nodes 2`, state in $PODCKPT_CLUSTER_DIR)
it installs the operator in it from `config/` (`podckpt.devtools.operator_install`), runs a
one-replica StatefulSet whose pod template carries `memverge.ai/checkpoint-mode: "true"` (a
busybox shell counting in memory), drains the node the pod runs on (`kubectl drain`: cordon,
then the Eviction API), and shows the new pod on the other node going on from where the old
one stopped: from which node to which, the downtime (the old program's last line to the new
program's first, both as timestamped by the container runtime; and from the drain command),
the agent's phases, and the Events of the old and the new pod, labelled and in order. Then it
uncordons the node. The cluster stays up for you to play with (`eval "$(hack/cluster.sh
env)"`); `hack/demo.sh down` (= `hack/cluster.sh down`) removes everything.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from typing import Any

from podckpt.devtools import operator_install
from podckpt.devtools.bundlecheck.roots import busybox_root
from podckpt.devtools.cluster.__main__ import _state_dir
from podckpt.devtools.cluster.cluster import TIER_NODE, Cluster

NAMESPACE = "demo"
POD = "counter-0"
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
                    "dnsPolicy": "Default",  # the local cluster has no cluster DNS
                    "containers": [
                        {
                            "name": "app",
                            "image": IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["/bin/sh", "-c", COUNTER],
                            "resources": {"limits": {"memory": "64Mi"}},
                        }
                    ],
                },
            },
        },
    }


def _pod(cluster: Cluster) -> dict[str, Any]:
    out = cluster.kubectl("get", "pod", "-n", NAMESPACE, POD, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _running(cluster: Cluster, not_uid: str = "", timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pod = _pod(cluster)
        meta, status = pod.get("metadata", {}), pod.get("status", {})
        running = [s for s in status.get("containerStatuses", []) if "running" in s["state"]]
        if running and meta.get("uid") != not_uid and not meta.get("deletionTimestamp"):
            return pod
        time.sleep(0.3)
    raise RuntimeError("demo: the pod did not start (see `kubectl describe pod -n demo`)")


def _lines(text: str) -> list[tuple[datetime.datetime, str]]:
    """``kubectl logs --timestamps`` output -> (time, line) pairs."""
    out = []
    for raw in text.splitlines():
        stamp, _, line = raw.partition(" ")
        try:
            when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            continue
        out.append((when, line))
    return out


def _hms(t: datetime.datetime) -> str:
    return t.strftime("%H:%M:%S.%f")[:-3]


def _counts(cluster: Cluster) -> list[tuple[datetime.datetime, str]]:
    text = cluster.kubectl("logs", "-n", NAMESPACE, POD, "--timestamps", check=False).stdout
    return [(t, x) for t, x in _lines(text) if x.startswith("count ")]


def _wait_counts(cluster: Cluster, at_least: int) -> list[tuple[datetime.datetime, str]]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        counts = _counts(cluster)
        if len(counts) >= at_least:
            return counts
        time.sleep(0.2)
    raise RuntimeError("demo: the counter does not count")


def _events(cluster: Cluster, uids: dict[str, str]) -> list[str]:
    """The Events of both pods (same name, told apart by UID), oldest first."""
    out = cluster.kubectl(
        "get", "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={POD}",
        "-o", "json", check=False,
    ).stdout  # fmt: skip
    items = json.loads(out or '{"items": []}')["items"]

    def when(e: dict[str, Any]) -> tuple[str, int]:
        stamp = e.get("eventTime") or e.get("lastTimestamp") or e.get("firstTimestamp") or ""
        return stamp[:19], int(e["metadata"].get("resourceVersion", "0") or 0)

    lines = []
    for e in sorted(items, key=when):
        label = uids.get(e.get("involvedObject", {}).get("uid", ""), "?")
        stamp = when(e)[0][11:19]
        source = e.get("reportingComponent") or e.get("source", {}).get("component", "")
        reason, message = e.get("reason", ""), e.get("message", "")
        lines.append(f"  {label:<8} {stamp}  {reason:<20} {source:<18} {message}")
    return lines


def up() -> int:
    cluster = Cluster(_state_dir())
    if not cluster.running(TIER_NODE) or len(cluster.node_names) < 2:
        _say("no two-node cluster runs: start it with hack/cluster.sh up --nodes 2 (demo.sh does)")
        return 1
    _say(f"nodes: {', '.join(f'{n.name} ({n.ip})' for n in cluster.state.nodes)}")
    _say("installing the podckpt operator in it from config/ (images built without Docker)")
    operator_install.install(cluster)
    cluster.load_image(busybox_root(), IMAGE, push=False)
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(_manifest()))
    _say("StatefulSet counter, pod template labelled memverge.ai/checkpoint-mode=true")
    old = _running(cluster)
    old_uid, source = old["metadata"]["uid"], old["spec"]["nodeName"]
    counts = _wait_counts(cluster, 8)
    _say(f"{POD} runs on {source} and is at: {counts[-1][1]}")
    follow = subprocess.Popen(
        [str(cluster.bin_dir / "kubectl"), "logs", "-f", "--timestamps", "-n", NAMESPACE, POD],
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(0.5)
    _say(f"kubectl drain {source} --ignore-daemonsets --delete-emptydir-data")
    _say("  (the node is cordoned; its pods are evicted: SIGTERM, the agent checkpoints)")
    started = datetime.datetime.now(datetime.UTC)
    drain = subprocess.Popen(
        [str(cluster.bin_dir / "kubectl"), "drain", source, "--ignore-daemonsets",
         "--delete-emptydir-data", "--timeout=300s"],
        env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    new = _running(cluster, not_uid=old_uid)
    target = new["spec"]["nodeName"]
    old_text = follow.communicate(timeout=120)[0]
    old_lines = [(t, x) for t, x in _lines(old_text) if x.startswith("count ")]
    new_counts = _wait_counts(cluster, 3)
    _, drain_err = drain.communicate(timeout=400)
    if drain.returncode != 0:
        _say(f"kubectl drain failed: {drain_err.strip()}")
    last_old, first_new = old_lines[-1], new_counts[0]
    _say(f"{POD} moved from {source} to {target}")
    _say(f"old pod's last line:  {last_old[1]:<10} at {_hms(last_old[0])}")
    _say(f"new pod's first line: {first_new[1]:<10} at {_hms(first_new[0])}")
    _say(f"new pod goes on: {', '.join(x for _, x in new_counts[:3])} ...")
    gap = (first_new[0] - last_old[0]).total_seconds()
    since_drain = (first_new[0] - started).total_seconds()
    _say(f"downtime: {gap:.1f} s without output; {since_drain:.1f} s from `kubectl drain`")
    text = cluster.kubectl("logs", "-n", NAMESPACE, POD, check=False).stdout
    for line in text.splitlines():
        if line.startswith("{") and '"agent":"podckpt"' in line:
            record = json.loads(line)
            took = record.get("duration_s")
            _say(f"  agent: {record.get('phase')} {record.get('outcome')} ({took} s)")
    # The controller posts its events after reading the agents' logs (and it may have been
    # on the drained node itself, so moving too): wait for the restore's event.
    uids = {old_uid: "old pod", new["metadata"]["uid"]: "new pod"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
        " Restored " in line or " RestoreFailed " in line for line in _events(cluster, uids)
    ):
        time.sleep(1)
    _say("events of the old and the new pod, oldest first:")
    for line in _events(cluster, uids):
        print(line, flush=True)
    ok = target != source and int(first_new[1].split()[1]) > int(last_old[1].split()[1]) - 2
    _say("resumed on the other node: the count went on" if ok else "NOT resumed")
    cluster.kubectl("uncordon", source)
    _say(f'kubectl uncordon {source}; the cluster stays up: eval "$(hack/cluster.sh env)"')
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
