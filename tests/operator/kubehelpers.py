"""Helpers of the operator tests: polling, a dict-based API client, a real registry."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client

T = TypeVar("T")


def eventually(check: Callable[[], T | None], timeout: float = 30, what: str = "") -> T:
    """Poll `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what or check.__name__} (last: {last!r})")


class Kube:
    """Typed-enough access for the tests: dicts in, dicts out."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.storage = client.StorageV1Api(api)

    def plain(self, obj: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.api.sanitize_for_serialization(obj)
        return result

    def create_pod(self, namespace: str, pod: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self.plain(self.core.create_namespaced_pod(namespace, pod, **kwargs))

    def denial(self, namespace: str, pod: dict[str, Any]) -> str:
        """The message of a refused pod creation (fails if the pod was admitted)."""
        try:
            self.core.create_namespaced_pod(namespace, pod)
        except client.ApiException as exc:
            message: str = json.loads(exc.body)["message"]
            return message
        raise AssertionError(f"pod {pod['metadata']} was admitted")

    def pods(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        items = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return [self.plain(p) for p in items]

    def pvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.plain(self.core.read_namespaced_persistent_volume_claim(name, namespace))
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return [self.plain(e) for e in items]

    def reasons(self, namespace: str, name: str) -> set[str]:
        return {e["reason"] for e in self.events(namespace, name)}


# ---- a real registry ----------------------------------------------------------------------


class Registry:
    def __init__(self, host: str, work: Path) -> None:
        self.host = host
        self.work = work

    def push(self, repo: str, *, entrypoint: list[str] | None, cmd: list[str] | None) -> str:
        """An image without layers whose config has `entrypoint` and `cmd`."""
        layout = self.work / f"layout-{uuid.uuid4().hex[:8]}"
        run = _run
        run("umoci", "init", "--layout", str(layout))
        run("umoci", "new", "--image", f"{layout}:t")
        config = [
            "umoci",
            "config",
            "--image",
            f"{layout}:t",
            "--os",
            "linux",
            "--architecture",
            "amd64",
        ]
        if entrypoint is not None:
            config += [f"--config.entrypoint={e}" for e in entrypoint] or [
                "--clear=config.entrypoint"
            ]
        else:
            config += ["--clear=config.entrypoint"]
        if cmd is not None:
            config += [f"--config.cmd={c}" for c in cmd] or ["--clear=config.cmd"]
        else:
            config += ["--clear=config.cmd"]
        run(*config)
        ref = f"{self.host}/{repo}:v1"
        run(
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{layout}:t",
            f"docker://{ref}",
        )
        return ref


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False
