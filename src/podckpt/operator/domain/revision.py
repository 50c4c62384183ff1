"""Which workload revision a pod belongs to: a checkpoint is restored only into a new pod of
the same revision (docs/architecture.md, "Restore only into the same revision").

The revision is decided at admission, from what the pod carries:

- a pod of a ReplicaSet (a Deployment's) carries `pod-template-hash`, and a pod of a
  StatefulSet or DaemonSet `controller-revision-hash`: the controller's own hash of the whole
  pod template. It changes with every template change, including those that touch no
  container: `kubectl rollout restart` (an annotation), a changed volume source, a new
  podckpt key on the template. A rollout means "run the new template": the new pods start
  fresh. It does not change when a pod is merely replaced (eviction, drain, deletion,
  a StatefulSet partition below the update), which is when a checkpoint must come back; and
  a Deployment's slot pods are renamed but keep their ReplicaSet's label;
- any other pod (a Job's, whose template cannot change, a plain pod, another controller's)
  gets a digest of the checkpointed container's own spec: image, command, args, working
  directory, env, envFrom, mounts (with the definitions of the volumes they mount) and
  resources. A plain pod deleted and applied again with another image, env or limit is a new
  revision; one applied unchanged restores.

What no revision sees: the content behind a reference (a ConfigMap or Secret changed in place,
an image tag that moved): those are not in the pod spec.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from podckpt.api import contract

#: Labels the workload controllers put on their pods, most specific first.
TEMPLATE_HASH_LABELS = ("controller-revision-hash", "pod-template-hash")

#: The service account token volume the API server adds to every pod before the webhooks run,
#: under a random name (`kube-api-access-x7k2q`): not part of what the user wrote.
SERVICE_ACCOUNT_VOLUME_PREFIX = "kube-api-access-"

#: The parts of a container that decide what its process is and sees.
SPEC_FIELDS = (
    "image",
    "command",
    "args",
    "workingDir",
    "env",
    "envFrom",
    "volumeMounts",
    "volumeDevices",
    "resources",
)


def spec_digest(container: Mapping[str, Any], volumes: Mapping[str, Any]) -> str:
    """`sha256:<hex>` of the container's spec as it was submitted (before podckpt's rewrite:
    the agent's own variables are left out) and of the pod volumes it mounts."""
    ours = set(contract.AGENT_ENV)
    spec: dict[str, Any] = {}
    for field in SPEC_FIELDS:
        value = container.get(field)
        if field == "env" and value:
            value = [e for e in value if e.get("name") not in ours]
        elif field in ("volumeMounts", "volumeDevices") and value:
            value = [m for m in value if not _generated(m)]
        if value:
            spec[field] = value
    mounted = {
        m.get("name"): volumes.get(m.get("name"))
        for m in (*spec.get("volumeMounts", ()), *spec.get("volumeDevices", ()))
    }
    if mounted:
        spec["mountedVolumes"] = mounted
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def _generated(mount: Mapping[str, Any]) -> bool:
    return str(mount.get("name", "")).startswith(SERVICE_ACCOUNT_VOLUME_PREFIX)


def revision(pod: Mapping[str, Any], container: Mapping[str, Any]) -> str:
    """The revision of `container` in `pod`: `<label>=<hash>` of the workload controller's
    template, else `spec=<digest>` of the container."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    for label in TEMPLATE_HASH_LABELS:
        value = labels.get(label)
        if value:
            return f"{label}={value}"
    volumes = {v.get("name"): v for v in (pod.get("spec") or {}).get("volumes") or ()}
    return "spec=" + spec_digest(container, volumes)
