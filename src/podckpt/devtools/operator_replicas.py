"""The operator as a cluster runs it, for the fault suite: several webhook replicas behind one
Service, and a controller that a test kills and restarts.

In a cluster the webhook is a Deployment of 2 replicas behind a Service: the API server calls
the Service, kube-proxy sends each new connection to one replica at random, and a dead replica
keeps receiving connections until the EndpointSlice controller removes it. Here the replicas
are processes of `python -m podckpt.operator.webhook` on ports of their own, behind
`service_proxy` (random endpoint per connection, endpoints from a file), and the
MutatingWebhookConfiguration calls the proxy's port. Every replica bootstraps its certificate
from the same Secret, as the Deployment's pods do.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
from pathlib import Path

from podckpt.devtools.operator_harness import ClusterLike, Operator, ca_bundle_set, free_port
from podckpt.devtools.service_proxy import write_endpoints


class ReplicatedOperator(Operator):
    """`replicas` webhook processes behind a Service stand-in on `self.port`."""

    def __init__(
        self, cluster: ClusterLike, *, replicas: int = 2, extra_env: dict[str, str] | None = None
    ) -> None:
        super().__init__(cluster, extra_env=extra_env)
        self.replica_ports = [free_port() for _ in range(replicas)]
        self.replicas: list[subprocess.Popen[bytes] | None] = [None] * replicas
        self.endpoints_file: Path = self.logs / f"endpoints-{self.port}"
        self.proxy: subprocess.Popen[bytes] | None = None

    # ---- the Service ----------------------------------------------------------------------

    def set_endpoints(self, replicas: list[int]) -> None:
        """The replicas the Service sends new connections to (the EndpointSlice)."""
        write_endpoints(
            self.endpoints_file, [("127.0.0.1", self.replica_ports[i]) for i in replicas]
        )

    def _start_proxy(self) -> None:
        if self.proxy is not None and self.proxy.poll() is None:
            return
        with (self.logs / "service-proxy.log").open("ab") as log:
            self.proxy = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "podckpt.devtools.service_proxy",
                    str(self.port),
                    str(self.endpoints_file),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    # ---- replicas -------------------------------------------------------------------------

    def start_replica(self, index: int, timeout: float = 60) -> None:
        """Start webhook replica `index` and wait until it serves (its port is open and the
        CA is in the configuration); it is not added to the endpoints here."""
        proc = self.replicas[index]
        if proc is not None and proc.poll() is None:
            return
        port = self.replica_ports[index]
        proc = self._spawn(
            "podckpt.operator.webhook", "podckpt-webhook", name=f"webhook-{index}", port=port
        )
        self.replicas[index] = proc
        self._started_or_stop(
            f"webhook-{index}",
            proc,
            lambda: ca_bundle_set(self.cluster) and _port_open(port),
            timeout,
        )

    def kill_replica(self, index: int) -> None:
        """SIGKILL replica `index`, as a node or OOM kill would: no graceful shutdown."""
        proc = self.replicas[index]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def start_webhook(self, timeout: float = 60) -> None:
        self.set_endpoints([])
        self._start_proxy()
        for index in range(len(self.replicas)):
            self.start_replica(index, timeout)
        self.set_endpoints(list(range(len(self.replicas))))
        self.webhook = self.replicas[0]

    def stop_webhook(self) -> None:
        for proc in self.replicas:
            self._stop(proc)
        self._stop(self.proxy)

    def kill_controller(self) -> None:
        """SIGKILL the controller (no cleanup, as a node or OOM kill)."""
        if self.controller is not None and self.controller.poll() is None:
            self.controller.send_signal(signal.SIGKILL)
            self.controller.wait(timeout=10)


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False
