"""`podckpt-agent`: command line of the agent.

podckpt-agent run [--store DIR] [--container NAME] [--labels-file F]
                  [--annotations-file F] [--user UID[:GID] | --user-probe F] [--non-root]
                  [--drop-capabilities CAPS] [--control-socket PATH] -- ARGV...
podckpt-agent checkpoint [--container NAME] [--socket PATH]
podckpt-agent whoami --out FILE          (the webhook's user probe)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from podckpt.api import CheckpointSettings, RestorePolicy, contract, criuopts

from . import AGENT_VERSION, appuser, capabilities, criu, exitcodes, isolation, log, pids
from .appstart import RestoreFailed, become_subreaper
from .context import Context
from .errors import (
    AgentError,
    CriuMissingError,
    CriuTooOldError,
    EnvironmentProblem,
    StoreError,
)
from .inputs import BadInput
from .manifest import Trust, load_key
from .settings import LiveSettings
from .store import Store
from .supervisor import Supervisor

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import NoReturn

DESCRIPTION = """\
Transparent CRIU checkpoint/restore for a container: the agent runs as PID 1, restores the
application from its checkpoint store or starts ARGV fresh, checkpoints it on SIGTERM (when
the pod's memverge.ai/checkpoint-mode label is true), and exits with the application's code."""


class _Parser(argparse.ArgumentParser):
    """Usage errors exit with the agent-failure code in one line, never with 2: the
    application's own exit code 2 must stay unambiguous."""

    def error(self, message: str) -> NoReturn:
        fail(f"usage: {message} (see podckpt-agent --help)")


def fail(message: str, code: int = exitcodes.AGENT_FAILURE) -> NoReturn:
    log.emit("start", "failed", error=message, exit_code=code)
    sys.stderr.write(f"podckpt-agent: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="podckpt-agent",
        description=DESCRIPTION,
        epilog=exitcodes.HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"podckpt-agent {AGENT_VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser(
        "run",
        help="supervise ARGV: restore it or start it fresh; checkpoint it on SIGTERM",
        epilog=exitcodes.HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    contract.add_run_options(run, os.environ)
    ckpt = sub.add_parser(
        "checkpoint", help="ask the running agent for a checkpoint now (the application runs on)"
    )
    ckpt.add_argument(
        "--container", help="the container whose agent this must be (checked by the agent)"
    )
    ckpt.add_argument(
        "--socket", help=f"the agent's control socket (default {contract.CONTROL_SOCKET})"
    )
    ckpt.add_argument("--timeout", type=float, default=600.0)
    whoami = sub.add_parser(
        contract.WHOAMI_COMMAND,
        help="write this process's uid, gid, groups and HOME (the webhook's user probe)",
    )
    whoami.add_argument(contract.WHOAMI_OUT_OPTION, dest="out", required=True)
    return parser


def main(argv: Sequence[str], started: float, early_floor: pids.EarlyFloor | None) -> NoReturn:
    args = build_parser().parse_args(argv)
    if args.command == "checkpoint":
        raise SystemExit(checkpoint_command(args.container, args.timeout, args.socket))
    if args.command == contract.WHOAMI_COMMAND:
        raise SystemExit(whoami_command(Path(args.out)))
    raise SystemExit(run_command(args, started, early_floor))


def whoami_command(out: Path) -> int:
    from .appuser import write_probe  # noqa: PLC0415

    try:
        write_probe(out, os.environ)
    except OSError as exc:
        sys.stderr.write(f"podckpt-agent whoami: cannot write {out}: {exc.strerror}\n")
        return exitcodes.AGENT_FAILURE
    return 0


def checkpoint_command(container: str | None, timeout: float, path: str | None = None) -> int:
    from . import control  # noqa: PLC0415 - `run` does not need it before the application starts

    try:
        answer = control.request("checkpoint", timeout, path=path, container=container)
    except AgentError as exc:
        sys.stderr.write(f"podckpt-agent checkpoint: {exc}\n")
        return exitcodes.AGENT_FAILURE
    if answer.get("ok"):
        sys.stdout.write(f"checkpoint {answer.get('generation')} committed\n")
        return 0
    sys.stderr.write(f"podckpt-agent checkpoint: failed: {answer.get('error')}\n")
    return 1


def run_command(
    args: argparse.Namespace, started: float, early_floor: pids.EarlyFloor | None
) -> int:
    try:
        command = contract.run_command_from(args)
    except ValueError as exc:
        fail(str(exc))
    argv = list(command.argv)
    if not argv:
        fail("missing the application's command: podckpt-agent run [options] -- ARGV...")
    namespace_labels: dict[str, str] = {}
    namespace_annotations: dict[str, str] = {}
    if command.namespace_defaults:
        try:
            namespace_labels, namespace_annotations = contract.parse_namespace_defaults(
                command.namespace_defaults
            )
        except ValueError as exc:
            fail(str(exc))
    try:
        app_user = appuser.resolve(command)
        drop = capabilities.numbers(command.drop_capabilities)
    except AgentError as exc:
        fail(str(exc))
    live = LiveSettings(
        Path(command.labels_file) if command.labels_file else None,
        Path(command.annotations_file) if command.annotations_file else None,
        namespace_labels,
        namespace_annotations,
    )
    try:
        settings = live.read()
    except AgentError as exc:
        fail(str(exc))
    for warning in settings.warnings:
        log.emit("settings", "warning", warning=warning)

    ctx: Context | None = None
    store: Store | None = None
    container = command.container or (Path(command.store).name if command.store else "app")
    if command.store is not None:
        key_problem = None
        try:
            trust = store_trust(os.environ)
        except EnvironmentProblem as exc:
            trust, key_problem = Trust(), exc
        store = open_store(Path(command.store), container, trust)
    pre_restore = None
    if early_floor is not None and early_floor.pre_restore:
        pre_restore, early_floor = early_floor, None
    if store is not None:
        if early_floor is None and (
            not store.candidates() or settings.restore_policy is RestorePolicy.FRESH
        ):
            if pre_restore is not None:
                pre_restore.result()
                pre_restore = None
            early_floor = pids.early_floor()
        ctx = _prepare_criu(store, settings.mode, key_problem)
        if ctx is not None:
            ctx.workload = workload_identity(argv, command.revision, app_user)
            ctx.origin = origin()
            ctx.pre_restore_floor = pre_restore
            pre_restore = None
    else:
        early_floor = early_floor or pids.early_floor()
        if command.store is None:
            log.emit(
                "start", "no-store", why="no --store: the agent supervises but never checkpoints"
            )
    if pre_restore is not None:
        pre_restore.result()  # nothing will restore: done (its helper reaped) before supervising

    supervisor = Supervisor(argv, live, settings, ctx, container, started)
    supervisor.early_floor = early_floor
    supervisor.isolation = _isolation(settings, ctx)
    if ctx is not None:
        _check_option_capabilities(settings, needed=settings.mode or bool(ctx.store.candidates()))
    supervisor.app_user = app_user
    supervisor.drop_capabilities = drop
    supervisor.control_path = command.control_socket or contract.CONTROL_SOCKET
    become_subreaper()
    supervisor.install_signals()
    supervisor.open_control_soon()
    try:
        supervisor.start()
    except RestoreFailed as exc:
        fail(str(exc), exitcodes.RESTORE_FAILURE)
    except AgentError as exc:
        fail(str(exc))
    supervisor.control_opened()
    return supervisor.run()


def _isolation(settings: CheckpointSettings, ctx: Context | None) -> isolation.Isolation:
    """What the application is started inside of. Without a store it is never dumped, so it
    needs nothing; a dormant agent without the capability starts it without, and says so."""
    wanted = isolation.decide(settings)
    if ctx is None or not wanted.any:
        return isolation.Isolation()
    try:
        isolation.check(wanted)
    except EnvironmentProblem as exc:
        if settings.mode:
            fail(str(exc))
        log.emit("start", "warning", warning=str(exc), then="started without it")
        return isolation.Isolation()
    return wanted


def _check_option_capabilities(settings: CheckpointSettings, *, needed: bool) -> None:
    """`tcp-established` needs CAP_NET_ADMIN (repair mode, network lock)."""
    options = (*settings.checkpoint_options, *settings.restore_options)
    absent = capabilities.missing(
        criuopts.capabilities_for(options), capabilities.effective_capabilities()
    )
    if not absent:
        return
    message = (
        "CRIU options " + ", ".join(options) + " need " + ", ".join(absent) + " in the"
        " container (the podckpt webhook adds it to pods that ask)"
    )
    if needed:
        fail(message)
    log.emit("start", "warning", warning=message)


def workload_identity(
    argv: list[str], revision: str | None, user: appuser.AppUser | None = None
) -> dict[str, object]:
    """The application's argv, the user it starts as and, when the webhook hands them over,
    the container's image and the workload revision of its pod: a checkpoint is restored only
    into the same (restorable.not_here)."""
    identity: dict[str, object] = {
        "argv": argv,
        "user": [0, 0] if user is None else user.as_workload(),
    }
    image = os.environ.get(contract.Env.IMAGE)
    if image:
        identity["image"] = image
    if revision:
        identity["revision"] = revision
    return identity


BOOT_ID = "/proc/sys/kernel/random/boot_id"


def origin() -> dict[str, str]:
    """The pod (its uid, from the webhook) and the node boot this container runs in."""
    found: dict[str, str] = {}
    uid = os.environ.get(contract.Env.POD_UID)
    if uid:
        found["pod_uid"] = uid
    with contextlib.suppress(OSError):
        found["boot_id"] = Path(BOOT_ID).read_text().strip()
    return found


def open_store(root: Path, container: str, trust: Trust) -> Store | None:
    """The container's store, or None when it cannot be used. Nothing on the volume keeps
    the application from starting: a store of a layout this agent does not know (a newer or
    older podckpt), another container's store, or one that cannot be written is left exactly
    as it is, the application starts fresh without checkpoints, and the log line (a Warning
    event) says why. A damaged store.json is rewritten (store.open)."""
    store = Store(root, container, trust)
    try:
        note = store.open()
    except StoreError as exc:
        log.emit(
            "store",
            "unusable",
            error=str(exc),
            then="the application starts fresh, without checkpoints in this container",
        )
        return None
    if note is not None:
        log.emit("store", "repaired", error=note)
    return store


def store_trust(environ: Mapping[str, str]) -> Trust:
    """The store key the webhook handed over (contract.Env.STORE_KEY), if any."""
    path = environ.get(contract.Env.STORE_KEY)
    accept = environ.get(contract.Env.STORE_ACCEPT_UNSIGNED, "").strip().lower() == "true"
    if not path:
        return Trust(None, accept_unsigned=accept)
    try:
        return Trust(load_key(path), accept_unsigned=accept)
    except BadInput as exc:
        raise EnvironmentProblem(
            f"store key ${contract.Env.STORE_KEY}: {exc}; without it checkpoints can be"
            " neither signed nor verified"
        ) from None


def _prepare_criu(
    store: Store, enabled: bool, key_problem: EnvironmentProblem | None = None
) -> Context | None:
    """Check CRIU, capabilities, seccomp and the store key now, not at the first dump.

    With checkpointing on (or a checkpoint waiting to be restored) a problem is fatal; a
    dormant agent (checkpoint-mode off) only warns and supervises."""
    needed = enabled or bool(store.candidates())
    try:
        if key_problem is not None:
            raise key_problem
        found = criu.find()
        capabilities.check_seccomp()
        capabilities.check_required()
    except (CriuMissingError, CriuTooOldError, EnvironmentProblem) as exc:
        if needed:
            fail(str(exc))
        log.emit("start", "dormant", why=str(exc))
        return None
    exclude = [str(store.root)]
    bundle = os.environ.get(contract.Env.BUNDLE)
    if bundle:
        exclude.append(bundle)
    return Context(
        store=store,
        criu=found,
        privileged=capabilities.criu_privileged(),
        exclude=exclude,
        lineage_start=time.time() - 1.0,
    )
