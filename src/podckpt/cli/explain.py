"""`kubectl podckpt explain POD`: what the webhook did to the pod and why.

Read from the pod itself (its podckpt annotations, the wrapped containers, the added init
container, volumes and grace period), its namespace's labels (which webhook entry matched) and
podckpt's Events on it. Nothing here needs the webhook: the pod carries its own story.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podckpt.api import (
    DEFAULT_EXCLUDED_CONTAINERS,
    InvalidValueError,
    Key,
    NamespaceKey,
    parse_settings,
    qualified,
)

from . import render
from .inspect import Domain, _meta, namespace_meta
from .kubectl import Kubectl, KubectlError

BUNDLE_INIT_CONTAINER = "podckpt-bundle"
OUR_VOLUMES = ("podckpt-bundle", "podckpt-meta", "podckpt-store")
EVENT_SOURCES = ("podckpt-controller", "podckpt")


def which_entry(
    labels: Mapping[str, str], ns_labels: Mapping[str, str], namespace: str
) -> tuple[str, str]:
    """(webhook entry, why) that admits a pod with these labels in this namespace."""
    mode = qualified(Key.CHECKPOINT_MODE)
    if mode in labels:
        return "opt-in", f"the pod carries the label {mode}={labels[mode]} (failure policy Fail)"
    if qualified(NamespaceKey.CHECKPOINT_MODE) in ns_labels:
        value = ns_labels[qualified(NamespaceKey.CHECKPOINT_MODE)]
        return (
            "namespace-default",
            f"namespace {namespace} carries {mode}={value}, the pods' default (failure policy"
            " Fail)",
        )
    injection = qualified(NamespaceKey.CHECKPOINT_INJECTION)
    if ns_labels.get(injection) == "enabled":
        return (
            "injection",
            f"namespace {namespace} has {injection}=enabled: injected dormant, woken by the pod's"
            f" own {mode} label (failure policy Ignore)",
        )
    return "none", f"neither the pod nor namespace {namespace} carries {mode} or {injection}"


def _agent_split(container: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(agent command, application argv) of a wrapped container."""
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if "--" in command:
        at = command.index("--")
        return command[:at], command[at + 1 :] + args
    return command, args


def collect(kubectl: Kubectl, name: str, domain: Domain) -> dict[str, Any]:
    pod = kubectl.get("pod", name)
    namespace = kubectl.current_namespace()
    ns = namespace_meta(kubectl, namespace)
    labels, annotations = _meta(pod, "labels"), _meta(pod, "annotations")
    spec = pod.get("spec") or {}
    entry, why = which_entry(labels, ns[0], namespace)
    injected = domain.key("injected") in annotations
    checkpointed = [c for c in annotations.get(domain.key("containers"), "").split(",") if c]
    doc: dict[str, Any] = {
        "pod": name,
        "namespace": namespace,
        "webhook_entry": entry,
        "why": why,
        "injected": injected,
        "annotations": {k: v for k, v in annotations.items() if k.startswith(f"{domain.name}/")},
    }
    try:
        settings = parse_settings(
            labels, annotations, namespace_labels=ns[0], namespace_annotations=ns[1]
        )
    except InvalidValueError as exc:
        doc["settings_error"] = str(exc)
    else:
        doc["settings"] = {
            "checkpoint-mode": settings.mode,
            "checkpoint-containers": list(settings.containers)
            if settings.containers is not None
            else None,
            "checkpoint-storage-volume": settings.storage_volume,
            "checkpoint-storage-class": settings.storage_class,
            "checkpoint-volume-size": settings.volume_size,
            "checkpoint-files": list(settings.files),
            "irmap-scan-paths": list(settings.irmap_scan_paths),
            "checkpoint-diagnosis": settings.diagnosis,
            "checkpoint-interval": settings.interval,
            "checkpoint-keep": settings.keep,
            "restore-policy": settings.restore_policy.value,
            "sources": {str(k): str(v.value) for k, v in settings.sources.items()},
        }
    containers = []
    for container in spec.get("containers") or ():
        cname = container.get("name")
        view: dict[str, Any] = {"name": cname, "checkpointed": cname in checkpointed}
        if cname in checkpointed:
            agent, argv = _agent_split(container)
            context = container.get("securityContext") or {}
            view.update(
                agent=agent,
                argv=argv,
                capabilities_added=((context.get("capabilities") or {}).get("add") or []),
                seccomp=(context.get("seccompProfile") or {}).get("type"),
                run_as_user=context.get("runAsUser"),
            )
        elif injected:
            view["why_not"] = (
                "excluded by default (a proxy sidecar)"
                if cname in DEFAULT_EXCLUDED_CONTAINERS
                else f"not listed in {qualified(Key.CHECKPOINT_CONTAINERS)}"
            )
        containers.append(view)
    doc["containers"] = containers
    doc["init_containers"] = [
        {"name": c.get("name"), "image": c.get("image")}
        for c in spec.get("initContainers") or ()
        if c.get("name") == BUNDLE_INIT_CONTAINER
    ]
    doc["volumes"] = [
        {
            "name": v.get("name"),
            "source": next((k for k in v if k != "name"), None),
            "claim": (v.get("persistentVolumeClaim") or {}).get("claimName"),
        }
        for v in spec.get("volumes") or ()
        if v.get("name") in OUR_VOLUMES
    ]
    doc["termination_grace_period_seconds"] = spec.get("terminationGracePeriodSeconds")
    doc["events"] = _events(kubectl, pod)
    return doc


def _events(kubectl: Kubectl, pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    uid = (pod.get("metadata") or {}).get("uid")
    try:
        events = kubectl.items("events", "--field-selector", f"involvedObject.uid={uid}")
    except KubectlError:
        return []
    out = []
    for e in events:
        source = (e.get("source") or {}).get("component") or e.get("reportingComponent") or ""
        if not source.startswith(EVENT_SOURCES) and "podckpt" not in (e.get("message") or ""):
            continue
        out.append(
            {
                "type": e.get("type"),
                "reason": e.get("reason"),
                "message": e.get("message"),
                "at": e.get("lastTimestamp") or e.get("eventTime"),
            }
        )
    return sorted(out, key=lambda e: str(e["at"]))


def text(doc: Mapping[str, Any]) -> str:
    lines = [f"pod {doc['pod']} in {doc['namespace']}:"]
    if doc["injected"]:
        a = doc["annotations"]
        mode = next((v for k, v in a.items() if k.endswith("/mode")), "?")
        lines.append(f"  injected by the webhook entry {doc['webhook_entry']}: {doc['why']}")
        lines.append(f"  agent mode: {mode}")
        for key in ("identity", "claim", "containers", "injected"):
            value = next((v for k, v in a.items() if k.endswith(f"/{key}")), None)
            if value:
                lines.append(f"  {key}: {value}")
    elif doc["webhook_entry"] == "none":
        lines.append(f"  not injected: {doc['why']}")
    else:
        lines.append(
            f"  NOT injected, although the webhook entry {doc['webhook_entry']} applies now"
            f" ({doc['why']}): the pod was created before that, or while the webhook was"
            " unavailable (failure policy Ignore), or its namespace is excluded"
        )
    if doc.get("settings_error"):
        lines.append(f"  invalid key: {doc['settings_error']}")
    elif doc.get("settings"):
        sources = doc["settings"].get("sources") or {}
        given = ", ".join(f"{k} ({v})" for k, v in sorted(sources.items()))
        lines.append(f"  keys given: {given or 'none (defaults)'}")
    for c in doc["containers"]:
        if c["checkpointed"]:
            lines.append(f"  container {c['name']}: checkpointed")
            lines.append(f"    runs the agent: {' '.join(c['agent'])}")
            lines.append(f"    application:    {' '.join(c['argv'])}")
            lines.append(
                f"    security:       capabilities +{','.join(c['capabilities_added']) or '-'},"
                f" seccomp {c['seccomp'] or '-'}, runAsUser {c['run_as_user']}"
                " (CRIU needs them; the application runs as its own user)"
            )
        else:
            lines.append(f"  container {c['name']}: not checkpointed ({c.get('why_not', '-')})")
    for init in doc["init_containers"]:
        lines.append(f"  init container {init['name']}: copies the agent bundle ({init['image']})")
    for v in doc["volumes"]:
        detail = f" claim {v['claim']}" if v.get("claim") else ""
        lines.append(f"  volume {v['name']}: {v['source']}{detail}")
    if doc["injected"]:
        lines.append(
            f"  terminationGracePeriodSeconds: {doc['termination_grace_period_seconds']}"
            " (time to dump the memory on deletion)"
        )
    if doc["events"]:
        lines.append("  events:")
        rows = [(e["type"], e["reason"], render.age(e["at"]), e["message"]) for e in doc["events"]]
        lines.append(render.table(("TYPE", "REASON", "AGE", "MESSAGE"), rows, "    "))
    return "\n".join(lines)
