"""Install and run the podckpt operator against the local cluster, the way a user would.

The shipped manifests (`config/`) are applied as the cluster admin: namespace, service
accounts, RBAC and the MutatingWebhookConfiguration (its `service:` clientConfig replaced by a
URL on 127.0.0.1, because the webhook runs on this host). The webhook and the controller run as
processes (`python -m podckpt.operator.webhook` / `python -m podckpt.operator.controller`) with
a token of their own service account, so they have exactly the shipped RBAC and nothing more.
The webhook's certificate comes from its own bootstrap (Secret + caBundle), as in a cluster.

Used by tests/operator and bench/webhook_latency.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import yaml

from podckpt.devtools.cluster import components

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "config"
NAMESPACE = "podckpt-system"
WEBHOOK_CONFIGURATION = "podckpt"


class ClusterLike(Protocol):
    """What the harness needs from `podckpt.devtools.cluster.Cluster`."""

    logs_dir: Path

    @property
    def server(self) -> str: ...

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]: ...

    def token_kubeconfig(self, namespace: str, serviceaccount: str) -> Path: ...


def free_port() -> int:
    """A port free now on every address, below the kernel's ephemeral range
    (`components.free_port`)."""
    return components.free_port("0.0.0.0")  # noqa: S104 - probing, closed at once


def load_manifests(*relative: str) -> list[dict[str, Any]]:
    """The YAML documents of files under config/."""
    docs: list[dict[str, Any]] = []
    for name in relative:
        docs += [d for d in yaml.safe_load_all((CONFIG / name).read_text()) if d]
    return docs


DEFAULT_PREFIX = "memverge.ai/"


def with_key_prefix(config: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """The MutatingWebhookConfiguration with its selectors and match conditions for the key
    prefix `new` instead of `old` (what an installation with PODCKPT_KEY_PREFIX patches)."""
    if old == new:
        return config
    text = json.dumps(config).replace(old, new)
    result: dict[str, Any] = json.loads(text)
    return result


def webhook_configuration(url: str) -> dict[str, Any]:
    """The shipped MutatingWebhookConfiguration, calling `url` instead of the Service."""
    (config,) = load_manifests("webhook/mutatingwebhookconfiguration.yaml")
    for webhook in config["webhooks"]:
        path = webhook["clientConfig"]["service"].get("path", "")
        webhook["clientConfig"] = {"url": url.rstrip("/") + path}
    return config


def _wait(
    what: str, check: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")


class KubectlLike(Protocol):
    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]: ...


def ca_bundle_set(cluster: KubectlLike) -> bool:
    """The webhook wrote its CA into every webhook of its configuration (it is ready to be
    called by the API server)."""
    out = cluster.kubectl(
        "get",
        "mutatingwebhookconfiguration",
        WEBHOOK_CONFIGURATION,
        "-o",
        "jsonpath={.webhooks[*].clientConfig.caBundle}",
        check=False,
    ).stdout.split()
    (config,) = load_manifests("webhook/mutatingwebhookconfiguration.yaml")
    return len(out) == len(config["webhooks"])


class Operator:
    """The installed operator; `start_*`/`stop_*` control its two processes."""

    def __init__(self, cluster: ClusterLike, *, extra_env: dict[str, str] | None = None) -> None:
        self.cluster = cluster
        self.port = free_port()
        self.extra_env = dict(extra_env or {})
        self.webhook: subprocess.Popen[bytes] | None = None
        self.controller: subprocess.Popen[bytes] | None = None
        self.metrics_ports: dict[str, int] = {}
        self.health_ports: dict[str, int] = {}
        self.logs = cluster.logs_dir / "operator"
        self.logs.mkdir(parents=True, exist_ok=True)
        #: Service account -> a kubeconfig to run it with instead of a fresh token's
        #: (tests that rotate the token rewrite that file while the process runs).
        self.kubeconfigs: dict[str, Path] = {}

    # ---- install --------------------------------------------------------------------------

    def install(self) -> None:
        docs = load_manifests(
            "namespace.yaml",
            "rbac/service_accounts.yaml",
            "rbac/webhook_role.yaml",
            "rbac/controller_role.yaml",
            "policy/reserved_keys.yaml",
        )
        docs.append(webhook_configuration(f"https://127.0.0.1:{self.port}"))
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    def uninstall(self) -> None:
        self.stop_webhook()
        self.stop_controller()
        self.cluster.kubectl(
            "delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION, "--ignore-not-found"
        )

    # ---- processes ------------------------------------------------------------------------

    def _env(self, serviceaccount: str, port: int | None = None) -> dict[str, str]:
        kubeconfig = self.kubeconfigs.get(serviceaccount) or self.cluster.token_kubeconfig(
            NAMESPACE, serviceaccount
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PODCKPT_", "KUBECONFIG"))}
        env.update(
            {
                "KUBECONFIG": str(kubeconfig),
                "PODCKPT_OPERATOR_NAMESPACE": NAMESPACE,
                "PODCKPT_WEBHOOK_ADDRESS": "127.0.0.1",
                "PODCKPT_WEBHOOK_PORT": str(port or self.port),
                "PODCKPT_WEBHOOK_EXTRA_NAMES": json.dumps(["127.0.0.1"]),
                # tests delete pods seconds after creating them
                "PODCKPT_SLOT_RESERVATION_SECONDS": "2",
                "PODCKPT_SLOT_LOST_AFTER_SECONDS": "3",
                "PODCKPT_ORPHAN_SWEEP_SECONDS": "3",
                "PODCKPT_CA_BUNDLE_CHECK_SECONDS": "1",
                "PYTHONPATH": str(REPO / "src"),
                "MALLOC_ARENA_MAX": "2",  # as in the shipped Deployments
            }
        )
        env.update(self.extra_env)
        return env

    def _spawn(
        self,
        module: str,
        serviceaccount: str,
        *,
        name: str | None = None,
        argv: list[str] | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """`python -m module` (or `argv`) as `serviceaccount`, output to `<name>.log`."""
        name = name or module.rsplit(".", 1)[-1]
        # Each process serves /metrics and kopf's /healthz on ports of its own.
        self.metrics_ports[name], self.health_ports[name] = free_port(), free_port()
        env = {
            **self._env(serviceaccount, port),
            "PODCKPT_METRICS_PORT": str(self.metrics_ports[name]),
            "PODCKPT_HEALTH_PORT": str(self.health_ports[name]),
            **(env or {}),
        }
        with (self.logs / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                argv or [sys.executable, "-m", module],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _started_or_stop(
        self, name: str, proc: subprocess.Popen[bytes], check: Callable[[], bool], timeout: float
    ) -> None:
        try:
            _wait(name, check, timeout, proc)
        except RuntimeError as exc:
            self._stop(proc)
            tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{exc}; log tail:\n{tail}") from None

    def _port_open(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
            return True
        return False

    def start_webhook(self, timeout: float = 60) -> None:
        if self.webhook is not None and self.webhook.poll() is None:
            return
        self.webhook = self._spawn("podckpt.operator.webhook", "podckpt-webhook")
        self._started_or_stop(
            "webhook",
            self.webhook,
            lambda: ca_bundle_set(self.cluster) and self._port_open(),
            timeout,
        )

    def start_controller(
        self,
        timeout: float = 30,
        *,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> None:
        """The controller; `argv`/`env`: the same controller under a test's wrapper (the
        fault suite's kill points); `wait=False`: return at once (it may die early)."""
        if self.controller is not None and self.controller.poll() is None:
            return
        log = self.logs / "controller.log"
        start = log.stat().st_size if log.exists() else 0
        self.controller = self._spawn(
            "podckpt.operator.controller", "podckpt-controller", argv=argv, env=env
        )
        if not wait:
            return

        def started() -> bool:
            with log.open("rb") as f:
                f.seek(start)
                return b"controller started" in f.read()

        self._started_or_stop("controller", self.controller, started, timeout)

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop_webhook(self) -> None:
        self._stop(self.webhook)

    def stop_controller(self) -> None:
        self._stop(self.controller)

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of the running operator processes."""
        out: dict[str, int] = {}
        for name, proc in (("webhook", self.webhook), ("controller", self.controller)):
            if proc is None or proc.poll() is not None:
                continue
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[name] = int(line.split()[1]) * 1024
        return out
