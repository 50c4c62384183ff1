"""`kubectl podckpt status [WORKLOAD|POD]`: opted in? injected? identity, volume, generations
with size and age, the last checkpoint and restore with outcome and duration, and why a pod
would not be checkpointed. Without a target: every podckpt volume and pod of the namespace."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from podckpt.api import parse_settings, summary

from . import render
from .inspect import Domain, _meta, claim_view, namespace_meta, pod_view, resolve, selector_text
from .kubectl import Kubectl


def _volumes(kubectl: Kubectl, domain: Domain, owner_uid: str | None) -> dict[str, dict[str, Any]]:
    """podckpt PVCs of the namespace (owned by `owner_uid` when given), by name."""
    claims = kubectl.items("persistentvolumeclaims", "-l", f"{domain.key('managed-by')}=podckpt")
    found = {}
    for claim in claims:
        owners = {o.get("uid") for o in (claim.get("metadata") or {}).get("ownerReferences") or ()}
        if owner_uid is None or owner_uid in owners:
            found[claim["metadata"]["name"]] = claim
    return found


def collect(kubectl: Kubectl, target: str | None, domain: Domain) -> dict[str, Any]:
    """The JSON document of `status` (what `-o json` prints)."""
    namespace = kubectl.current_namespace()
    ns = namespace_meta(kubectl, namespace)
    kind, name, obj = resolve(kubectl, target)
    result: dict[str, Any] = {"namespace": namespace, "kind": kind, "name": name}
    claims: dict[str, dict[str, Any]] | None
    if kind == "pod":
        assert obj is not None
        pods, claims = [obj], None  # its own PVC only, read by name
    elif obj is not None:
        template = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
        try:
            opted = parse_settings(
                dict(template.get("labels") or {}),
                dict(template.get("annotations") or {}),
                namespace_labels=ns[0],
                namespace_annotations=ns[1],
            ).mode
        except ValueError as exc:
            opted = False
            result["error"] = str(exc)
        result["opted_in"] = opted
        selector = selector_text((obj.get("spec") or {}).get("selector") or {})
        pods = kubectl.items("pods", "-l", selector) if selector else []
        claims = _volumes(kubectl, domain, obj["metadata"]["uid"])
    else:
        pods = [
            p for p in kubectl.items("pods") if domain.key("injected") in _meta(p, "annotations")
        ]
        claims = _volumes(kubectl, domain, None)
    views = [pod_view(kubectl, p, ns, domain, claims) for p in pods]
    result["pods"] = views
    used = {(v.get("claim") or {}).get("name") for v in views}
    result["volumes"] = [
        volume_view(c, domain) for n, c in sorted((claims or {}).items()) if n not in used
    ]
    return result


def volume_view(claim: Mapping[str, Any], domain: Domain) -> dict[str, Any]:
    annotations = _meta(claim, "annotations")
    record = summary.parse(annotations.get(summary.annotation(domain.name)))
    owners = (claim.get("metadata") or {}).get("ownerReferences") or []
    return {
        **(claim_view(claim, None) or {}),
        "identity": annotations.get(domain.key("identity")),
        "owner": f"{owners[0]['kind']}/{owners[0]['name']}" if owners else None,
        "checkpoints": record.get("containers") or {},
    }


def _last(entry: Mapping[str, Any], which: str) -> str:
    last = entry.get(which) or {}
    if not last:
        return "-"
    outcome = last.get("outcome", "?")
    if which == "last_checkpoint":
        took = sum(
            v for v in (last.get("dump_s"), last.get("commit_s")) if isinstance(v, int | float)
        )
        detail = (
            f" {last.get('generation')} {render.size(last.get('bytes'))} in {render.seconds(took)}"
            if outcome == "ok"
            else f": {last.get('error')}"
        )
    else:
        detail = (
            f" {last.get('generation')} in {render.seconds(last.get('duration_s'))}"
            if outcome == "ok"
            else f": {last.get('why')}"
            if last.get("why")
            else ""
        )
    return f"{outcome}{detail} ({render.age(last.get('at'))} ago, pod {last.get('pod')})"


def _checkpoints_text(checkpoints: Mapping[str, Any], indent: str) -> list[str]:
    lines = []
    for container, entry in sorted(checkpoints.items()):
        lines.append(f"{indent}container {container}:")
        lines.append(f"{indent}  last checkpoint: {_last(entry, 'last_checkpoint')}")
        lines.append(f"{indent}  last restore:    {_last(entry, 'last_restore')}")
        generations = entry.get("generations") or []
        if generations:
            rows = [
                (
                    g.get("generation"),
                    render.size(g.get("bytes")),
                    render.age(g.get("at")),
                    "failed to restore" if g.get("failed") else "",
                )
                for g in reversed(generations)
            ]
            lines.append(render.table(("GENERATION", "SIZE", "AGE", ""), rows, indent + "  "))
        else:
            lines.append(f"{indent}  no generation to restore")
    return lines


def text(doc: Mapping[str, Any]) -> str:
    lines = []
    if doc.get("name") and doc["kind"] != "pod":
        lines.append(
            f"{doc['kind']}/{doc['name']} in {doc['namespace']}:"
            f" {'opted in' if doc.get('opted_in') else 'NOT opted in'}"
            + (f" ({doc['error']})" if doc.get("error") else "")
        )
    pods = doc.get("pods") or []
    if pods:
        rows = [
            (
                p["name"],
                p["phase"],
                "yes" if p["opted_in"] else "no",
                f"yes ({p['mode']})" if p["injected"] else "no",
                p.get("identity"),
                (p.get("claim") or {}).get("name"),
                "yes" if not p["not_checkpointable"] else "NO",
            )
            for p in pods
        ]
        headers = ("POD", "PHASE", "OPTED-IN", "INJECTED", "IDENTITY", "VOLUME", "CHECKPOINTABLE")
        lines.append(render.table(headers, rows))
    for p in pods:
        claim = p.get("claim") or {}
        lines.append("")
        lines.append(f"pod {p['name']}:")
        if claim:
            lines.append(
                f"  volume {claim.get('name')}: {claim.get('phase')},"
                f" {claim.get('capacity') or '-'},"
                f" class {claim.get('storage_class') or '(default)'}"
            )
        for reason in p["not_checkpointable"]:
            lines.append(f"  not checkpointable: {reason}")
        lines += _checkpoints_text(p.get("checkpoints") or {}, "  ")
    volumes = doc.get("volumes") or []
    if volumes:
        lines.append("")
        lines.append("volumes without a pod now:" if pods else "podckpt volumes:")
        for v in volumes:
            lines.append(
                f"  {v['name']} ({v.get('identity')}): {v.get('phase')},"
                f" {v.get('capacity') or '-'}, owner {v.get('owner') or 'none (orphaned)'}"
            )
            lines += _checkpoints_text(v.get("checkpoints") or {}, "    ")
    if not pods and not volumes:
        lines.append(f"no podckpt pod or volume in namespace {doc['namespace']}")
    return "\n".join(lines)
