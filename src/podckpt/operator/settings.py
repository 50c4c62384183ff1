"""Settings of the webhook and the controller, from the environment (prefix `PODCKPT_`).

Every knob that the Deployment manifests set is here, with its default and the reason for it.
The key prefix of the user API (`PODCKPT_KEY_PREFIX`) is read by `podckpt.api` itself, because
the agent reads it too; the operator's own annotations live under `domain`.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from podckpt.api import contract

#: Capabilities the webhook adds to every checkpointed container, never `privileged: true`:
#: the agent's own list (`contract.REQUIRED_CAPABILITIES`, measured by the agent and bundle
#: work). TCP sockets are dumped and restored with `--tcp-close`, which needs no NET_ADMIN;
#: NET_ADMIN (`tcp-established`) and SYS_ADMIN (an own IPC namespace, the io_uring filter) are
#: added only to containers that ask (webhook/transparency.py).
DEFAULT_AGENT_CAPABILITIES: tuple[str, ...] = tuple(
    dict.fromkeys(contract.kubernetes_capability(c) for c in contract.REQUIRED_CAPABILITIES)
)

GIB = 2**30
MIB = 2**20


class OperatorSettings(BaseSettings):
    """What the webhook and the controller are configured with (env `PODCKPT_<FIELD>`)."""

    model_config = SettingsConfigDict(env_prefix="PODCKPT_", frozen=True, extra="ignore")

    #: Domain of podckpt's own annotations and labels (status, identity) and of kopf's.
    domain: str = "podckpt.io"
    #: Namespace the operator runs in: never injected, like the system namespaces.
    operator_namespace: str = "podckpt-system"
    #: Namespaces never touched, whatever their labels say.
    excluded_namespaces: tuple[str, ...] = ("kube-system", "kube-public", "kube-node-lease")

    # -- the bundle and the agent ------------------------------------------------------------
    #: The init-container image built by `podckpt.bundle` (docs/bundle.md): the bundle at
    #: /.podckpt in the image, copied into the emptyDir mounted at `bundle_install_target`.
    bundle_image: str = "podckpt.local/podckpt-bundle:latest"
    bundle_image_pull_policy: str = "IfNotPresent"
    bundle_install_command: tuple[str, ...] = (
        "/.podckpt/bin/podckpt-agent",
        "install",
        "--to",
        "/podckpt",
    )
    #: Where the init container mounts the emptyDir (not /.podckpt: that would hide the
    #: image's own bundle).
    bundle_install_target: str = "/podckpt"
    #: `sizeLimit` of the bundle's emptyDir (the bundle is 45 MB, docs/bundle.md); the pod's
    #: ephemeral-storage limit, if it has one, is raised by as much (docs/operator.md).
    bundle_volume_bytes: int = 64 * MIB
    #: Memory the agent and CRIU use in a checkpointed container (measured: docs/benchmarks.md
    #: "Footprint"); a container's memory limit, if it has one, is raised by as much.
    agent_memory_bytes: int = 64 * MIB
    #: (Where checkpointed containers mount the bundle, the pod's metadata and the store is
    #: fixed by the webhook<->agent contract, `podckpt.api.contract`, not a setting.)
    agent_capabilities: tuple[str, ...] = DEFAULT_AGENT_CAPABILITIES

    # -- the store key ----------------------------------------------------------------------
    #: The per-namespace Secret whose `key` authenticates checkpoint manifests (HMAC-SHA256,
    #: docs/security.md): the controller creates it (create only: it never reads Secrets),
    #: the webhook mounts it into the bundle init container only, which copies it where only
    #: the root agent can read it. Empty: no key, manifests are not authenticated.
    store_key_secret: str = "podckpt-store-key"  # noqa: S105 - a Secret name
    #: Restore checkpoints written by podckpt 0.1.0 (they carry no HMAC) although a key is
    #: set. For the upgrade from 0.1.0 only: while it is on, whoever can write a checkpoint
    #: volume can make the agent restore unauthenticated images (docs/upgrade.md).
    store_accept_unsigned: bool = False

    # -- grace period -------------------------------------------------------------------------
    #: Dump throughput assumed when sizing terminationGracePeriodSeconds. Measured 1.0-1.5 GB/s
    #: to local ext4 including fsync (CRIU notes); we assume 200 MiB/s so that network volumes
    #: and a busy node still finish.
    dump_bytes_per_second: int = 200 * MIB
    #: Fixed part of the grace period: freezing, CRIU start-up, saving checkpoint-files, fsync.
    grace_base_seconds: int = 30
    #: Memory assumed for a checkpointed container without a memory limit.
    assumed_memory_bytes: int = 2 * GIB
    #: Copy of GPU memory into host memory before the dump (the CUDA driver's checkpoint).
    #: Measured 2.1 GiB/s on an H200 (8 GiB in 3.9 s, issue 17); we assume half.
    gpu_copy_bytes_per_second: int = 1 * GIB
    #: Memory of one GPU whose model the pod does not name (no `nvidia.com/gpu.product`
    #: selector, no `gpu-memory` key): an 80 GiB A100/H100.
    assumed_gpu_memory_bytes: int = 80 * GIB

    # -- volumes ------------------------------------------------------------------------------
    #: Headroom of a generation on top of the memory it dumps: page-aligned images, CRIU
    #: metadata, logs and checkpoint-files (fraction, plus a fixed amount).
    volume_headroom_fraction: float = 0.10
    volume_headroom_bytes: int = 256 * MIB
    #: Size of a dynamic PVC when no checkpointed container has a memory limit.
    default_volume_bytes: int = 10 * GIB
    volume_access_mode: str = "ReadWriteOnce"

    # -- image configs --------------------------------------------------------------------------
    #: Registries reached over plain HTTP (besides 127.0.0.0/8 and localhost, as Docker does).
    insecure_registries: tuple[str, ...] = ()
    #: How long a tag is trusted to point at the digest it resolved to.
    tag_cache_seconds: float = 300.0
    image_config_cache_size: int = 2048
    #: Per registry request (each admission also has `admission_deadline_seconds` in all).
    registry_timeout_seconds: float = 5.0
    #: A registry reply (manifest, index, config, token) larger than this is refused: a
    #: hostile registry must not exhaust the webhook's memory (256 MiB limit, 20 admissions
    #: in flight).
    registry_max_reply_bytes: int = Field(default=4 * MIB, gt=0)
    #: Token services on another host than their registry that may receive pull credentials
    #: (registry as written in image references -> hosts), e.g.
    #: `{"registry.gitlab.com": ["gitlab.com"]}`; Docker Hub's auth.docker.io is built in.
    registry_token_hosts: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    platform_os: str = "linux"
    platform_architecture: str = "amd64"

    # -- webhook server -----------------------------------------------------------------------
    #: Everything an admission waits for (pull Secrets, registries, slot holders) must end
    #: within this, so the answer reaches the API server inside the webhook's
    #: `timeoutSeconds` (10 in config/) with margin, even when a registry hangs.
    admission_deadline_seconds: float = Field(default=7.0, gt=0)
    #: The webhook's own service account (`namespace:name` is named in denials that tell a
    #: namespace how to grant it read access to pull Secrets).
    webhook_service_account: str = "podckpt-webhook"
    webhook_port: int = 9443
    webhook_address: str = "0.0.0.0"  # noqa: S104 - a Service routes to the pod
    webhook_certfile: str | None = None
    webhook_keyfile: str | None = None
    webhook_cafile: str | None = None
    #: Names used by the certificate bootstrap (certs.py).
    webhook_service: str = "podckpt-webhook"
    webhook_secret: str = "podckpt-webhook-tls"  # noqa: S105 - a Secret name
    webhook_configuration: str = "podckpt"
    #: More names (DNS or IP) for the generated certificate, e.g. `127.0.0.1` when the API
    #: server calls the webhook by URL (tests, out-of-cluster development).
    webhook_extra_names: tuple[str, ...] = ()
    #: A slot handed out stays reserved in this webhook replica for this long: it covers the
    #: gap between the admission response and the pod being stored (milliseconds), so that
    #: pods created at once get distinct slots without a retry. Longer would keep a slot from
    #: the replacement of a pod deleted right after its creation.
    slot_reservation_seconds: float = 5.0
    #: A deleted slot pod still there this long after its deadline (deletion + grace period)
    #: is taken as lost with its node or kubelet: its replacement takes the slot under the
    #: next name instead of waiting forever (`podckpt.operator.domain.slots`).
    slot_lost_after_seconds: float = 30.0
    #: How often each replica checks that the webhook configuration still carries its CA
    #: (`kubectl apply -k config/` or `helm upgrade` may re-apply it without one).
    ca_bundle_check_seconds: float = Field(default=30.0, gt=0)

    # -- controller ---------------------------------------------------------------------------
    #: A pod whose checkpoint PVC is not there yet (or belongs to a deleted workload of the same
    #: name) is created with the scheduling gate `<domain>/checkpoint-volume`, which the
    #: controller removes once the PVC is usable: the scheduler never looks for a missing PVC
    #: (no FailedScheduling warnings) and never binds a volume that is going away. Off: such
    #: pods are Pending on the missing PVC until the controller has created it.
    scheduling_gate: bool = True
    #: How often the controller re-reads a PVC that gated pods wait for (besides its watch).
    gate_recheck_seconds: float = 5.0
    orphan_sweep_seconds: float = 600.0
    #: Read this much of a container's log to find the agent's restore line.
    agent_log_head_bytes: int = 65536

    #: Read this much of a container's log tail after `kubectl podckpt checkpoint` asked for a
    #: checkpoint (the pod's `<domain>/checkpoint-requested` annotation changed).
    agent_log_tail_bytes: int = 65536

    # -- leader election (controller) ---------------------------------------------------------
    #: Off for a single replica (and the test harness); the Deployments turn it on. Values as
    #: client-go's defaults: a lost leader is replaced within ~lease duration.
    leader_election: bool = False
    lease_name: str = "podckpt-controller"
    lease_duration_seconds: float = Field(default=15.0, gt=0)
    #: The leader gives up (and exits) when it could not renew for this long.
    lease_renew_deadline_seconds: float = Field(default=10.0, gt=0)
    lease_retry_seconds: float = Field(default=2.0, gt=0)
    #: This replica's name in the Lease (the Deployments set the pod name).
    pod_name: str = ""

    # -- misc -----------------------------------------------------------------------------------
    log_level: str = "INFO"
    #: Prometheus `/metrics` (0: off).
    metrics_port: int = Field(default=8080, ge=0)
    #: kopf's liveness/readiness endpoint `/healthz` (0: off).
    health_port: int = Field(default=8081, ge=0)

    @property
    def gate_name(self) -> str:
        """The scheduling gate of a pod that waits for its checkpoint volume."""
        return self.annotation("checkpoint-volume")

    def annotation(self, name: str) -> str:
        """A podckpt-owned annotation or label name, e.g. `podckpt.io/injected`."""
        return f"{self.domain}/{name}"


def load_settings() -> OperatorSettings:
    return OperatorSettings()
