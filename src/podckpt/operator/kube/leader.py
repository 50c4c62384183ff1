"""Leader election with a coordination.k8s.io/v1 Lease, as client-go's leaderelection does.

The controller runs two replicas; only the holder of the Lease acts (creates PVCs, posts
Events, records checkpoints), the other keeps its watches warm and takes over when the
holder stops renewing. Expiry is judged by the *local* clock from the moment this replica
last saw the Lease change (client-go's "observed time"), never by comparing the holder's
renewTime with our clock, so clock skew between nodes does not matter. A leader that could
not renew within the renew deadline stops acting at once and reports it (the process then
exits and the kubelet restarts it as a follower), so two replicas never act for longer than
the lease duration at the same time.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from .api import ApiError, KubeAPI, namespaced

logger = logging.getLogger(__name__)


class LeadershipLost(Exception):
    """The leader could not renew its Lease within the renew deadline."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: KubeAPI,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: float,
        renew_deadline_seconds: float,
        retry_seconds: float,
        on_change: Callable[[bool], None] = lambda _leading: None,
    ) -> None:
        self.api = api
        self.path = namespaced("/apis/coordination.k8s.io/v1/leases", namespace)
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline_seconds
        self.retry_seconds = retry_seconds
        self.on_change = on_change
        self.leading = False
        #: Monotonic time of the last successful exchange with the API server (liveness).
        self.last_contact = time.monotonic()
        self._renewed = 0.0
        self._observed: tuple[str | None, str | None] = (None, None)
        self._observed_at = time.monotonic()

    def _spec(self, transitions: int, acquired: str | None = None) -> dict[str, Any]:
        now = _now()
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_seconds),
            "acquireTime": acquired or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def try_once(self) -> bool:
        """One acquire-or-renew round; True if this replica holds the Lease afterwards."""
        try:
            lease = await self.api.get(f"{self.path}/{self.name}")
        except ApiError as exc:
            if not exc.not_found:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name},
                "spec": self._spec(0),
            }
            try:
                await self.api.post(self.path, body)
            except ApiError as create_error:
                if create_error.conflict:
                    return False  # another replica created it first
                raise
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        key = (holder, spec.get("renewTime"))
        if key != self._observed:
            self._observed, self._observed_at = key, time.monotonic()
        duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        expired = time.monotonic() - self._observed_at > duration
        if holder and holder != self.identity and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder != self.identity:
            transitions += 1
        acquired = spec.get("acquireTime") if holder == self.identity else None
        patch = {
            # optimistic: a replica that changed the Lease since our read wins (409)
            "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": self._spec(transitions, acquired),
        }
        try:
            await self.api.merge_patch(f"{self.path}/{self.name}", patch)
        except ApiError as exc:
            if exc.conflict:
                return False
            raise
        return True

    async def release(self) -> None:
        """Give the Lease up at a clean shutdown (client-go's ReleaseOnCancel), so that the
        standby takes over at its next retry instead of waiting out the lease (rollouts)."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = await self.api.get(f"{self.path}/{self.name}")
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            patch = {
                "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {"holderIdentity": None, "leaseDurationSeconds": 1},
            }
            await self.api.merge_patch(f"{self.path}/{self.name}", patch)
            logger.info("released lease %s", self.name)
        except (TimeoutError, ApiError, OSError) as exc:
            logger.warning("could not release lease %s: %s", self.name, exc)

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            logger.warning(
                "%s leadership of lease %s (%s)",
                "acquired" if leading else "lost",
                self.name,
                self.identity,
            )
            self.on_change(leading)

    async def run(self) -> None:
        """Acquire, then renew every retry period, forever. Raises LeadershipLost when the
        leader could not renew within the renew deadline."""
        while True:
            try:
                held = await self.try_once()
                self.last_contact = time.monotonic()
            except (TimeoutError, ApiError, OSError) as exc:
                logger.warning("lease %s: %s", self.name, exc)
                held = None  # unknown: keep leading until the renew deadline
            if held:
                self._renewed = time.monotonic()
                self._set(True)
            elif held is False and self.leading:
                self._set(False)
                raise LeadershipLost(f"lease {self.name} was taken by another replica")
            if self.leading and time.monotonic() - self._renewed > self.renew_deadline:
                self._set(False)
                raise LeadershipLost(
                    f"lease {self.name} not renewed within {self.renew_deadline:.0f} s"
                )
            await asyncio.sleep(self.retry_seconds)
