"""Whether a generation may be restored into this container at all, and with which options:
decided before CRIU runs.

A generation that does not belong in this container is not restored at all, and that is no
failure (`NotHere`): one made by this very pod (the container was restarted inside its pod by
a liveness probe, an OOM kill, a crash: the restart is meant to cure it), or by another
workload revision (a rollout, a changed spec: the new pod runs the new template). A sound
generation this container cannot take (another CRIU, another GPU model or count) is refused
(`GenerationRefused`), not marked FAILED: it is still there if the fresh start that follows
fails.
"""

from __future__ import annotations

import dataclasses

from podckpt.api.criuopts import Phase, for_phase, has, mirrored

from .errors import GenerationInvalidError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from . import gpurestore
    from .context import Context
    from .generations import Generation
    from .manifest import Manifest


@dataclasses.dataclass(frozen=True)
class NotHere:
    """The newest generation does not belong in this container; it starts fresh."""

    #: `SamePod` or `NewRevision` (the controller's `StartedFresh` Event names it).
    cause: str
    generation: str
    why: str


SAME_POD = "SamePod"
NEW_REVISION = "NewRevision"


class GenerationRefused(GenerationInvalidError):
    """A sound generation that is not for this container (another program, another CRIU):
    not marked FAILED, so that it is still there if the fresh start that follows fails
    (a mistyped command must not cost the checkpoint that fixing it would restore)."""


def restore_options(manifest: Manifest, asked: tuple[str, ...]) -> tuple[str, ...]:
    """What the restore of this image needs from its dump (`tcp-established` dumped needs it
    at restore too), then the workload's restore options (which may say `tcp-close`)."""
    dumped = manifest.criu_options
    wanted = dict.fromkeys((*mirrored(dumped), *for_phase(asked, Phase.RESTORE)))
    if has(tuple(wanted), "tcp-close"):
        wanted.pop("tcp-established", None)
    return tuple(wanted)


def check_compatible(ctx: Context, gen: Generation, manifest: Manifest) -> None:
    dumped = manifest.criu_version
    if dumped.split(".")[:2] != ctx.criu.version_text.split(".")[:2]:
        raise GenerationRefused(
            gen.name, f"dumped by CRIU {dumped}, this is CRIU {ctx.criu.version_text}"
        )


def not_here(ctx: Context, gen: Generation, manifest: Manifest) -> NotHere | None:
    """Why `gen` must not be restored into this container, if it must not.

    The same pod in the same node boot: the container was restarted inside its pod. (After
    a reboot of the node under the pod, the kubelet restarts its containers: that is no cure
    of the application, and the checkpoint comes back as for a new pod.) Another revision,
    image or argv: the pod runs a new template. Manifests of older agents lack these fields,
    and only what both sides know is compared."""
    made_by = manifest.origin
    ours = ctx.origin
    if (
        ours.get("pod_uid")
        and made_by.get("pod_uid") == ours["pod_uid"]
        and made_by.get("boot_id") == ours.get("boot_id")
    ):
        return NotHere(
            SAME_POD,
            gen.name,
            f"generation {gen.name} was made by this pod; the container was restarted inside"
            " it (liveness or startup probe, OOM kill, crash or kill) and starts fresh",
        )
    dumped = manifest.workload or {}
    user = ctx.workload.get("user")
    if isinstance(user, list) and user != [0, 0] and dumped.get("user") != user:
        # A non-root application is never resumed from a checkpoint of another user's, or
        # of one that does not say (root, with runAsNonRoot, would come back as root).
        return NotHere(
            NEW_REVISION,
            gen.name,
            f"generation {gen.name} was made as user {dumped.get('user', 'unknown')}, this pod"
            f" runs its application as {user}",
        )
    for key in ("revision", "image", "argv", "user"):
        if key in dumped and key in ctx.workload and dumped[key] != ctx.workload[key]:
            return NotHere(
                NEW_REVISION,
                gen.name,
                f"generation {gen.name} was made by {key} {dumped[key]!r}, this pod runs"
                f" {ctx.workload[key]!r}",
            )
    return None


def gpu_restore_plan(gen: Generation, manifest: Manifest) -> gpurestore.RestorePlan | None:
    """The same GPU model and count as at the dump, else GenerationRefused (before CRIU)."""
    if manifest.body.get("gpu") is None:
        return None
    from . import gpurestore  # noqa: PLC0415 - ctypes and the driver only for GPU generations

    try:
        return gpurestore.plan_restore(gen.name, manifest.body)
    except gpurestore.GpuMismatchError as exc:
        raise GenerationRefused(gen.name, exc.reason) from exc
