"""Running `kubectl` for the plugin: JSON in, clear errors out.

The plugin never talks to the API server itself: kubectl already knows the user's kubeconfig,
context, namespace and credential plugins, and a kubectl plugin is run by kubectl anyway.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from typing import Any


class KubectlError(Exception):
    """kubectl failed; the message is kubectl's own last words."""


class NotFoundError(KubectlError):
    pass


@dataclasses.dataclass(frozen=True)
class Kubectl:
    namespace: str | None = None
    context: str | None = None
    kubeconfig: str | None = None
    binary: str = dataclasses.field(
        default_factory=lambda: (
            os.environ.get("PODCKPT_KUBECTL") or shutil.which("kubectl") or "kubectl"
        )
    )

    def _global(self) -> list[str]:
        args = []
        if self.context:
            args += ["--context", self.context]
        if self.kubeconfig:
            args += ["--kubeconfig", self.kubeconfig]
        return args

    def run(
        self, *args: str, namespaced: bool = True, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.binary, *self._global()]
        if namespaced and self.namespace:
            argv += ["--namespace", self.namespace]
        try:
            proc = subprocess.run(
                [*argv, *args], capture_output=True, text=True, timeout=timeout, check=False
            )
        except FileNotFoundError:
            raise KubectlError(
                f"{self.binary} not found: install kubectl or set PODCKPT_KUBECTL"
            ) from None
        except subprocess.TimeoutExpired:
            raise KubectlError(
                f"kubectl {' '.join(args[:3])} timed out after {timeout:.0f} s"
            ) from None
        if check and proc.returncode != 0:
            message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
            if "NotFound" in proc.stderr or "not found" in message:
                raise NotFoundError(message)
            raise KubectlError(message)
        return proc

    def get(self, *what: str, namespaced: bool = True) -> dict[str, Any]:
        """`kubectl get WHAT -o json`."""
        out = self.run("get", *what, "-o", "json", namespaced=namespaced).stdout
        result: dict[str, Any] = json.loads(out)
        return result

    def items(self, *what: str, namespaced: bool = True) -> list[dict[str, Any]]:
        found = self.get(*what, namespaced=namespaced)
        return list(found.get("items", [found] if found.get("kind") != "List" else []))

    def current_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        out = self.run(
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={..namespace}",
            namespaced=False,
            check=False,
        ).stdout.strip()
        return out or "default"
