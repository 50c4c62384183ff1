"""One zdtm static test through a container death, under the agent or under raw CRIU.

Both sides run the same tree in the same kind of sandbox (tests/agent's: new mount, PID, IPC,
UTS and network namespaces, an empty writable layer each time), with the same capabilities,
and the test's working directory on a bind mount that outlives the sandbox (a volume):

1. start: `zdtm-wrap static/TEST --pidfile=TEST.pid --outfile=TEST.out [args]` as the
   application (the agent's `run -- ARGV`, or rawinit's child); ready when the pidfile exists;
2. death: the agent gets SIGTERM and checkpoints (its `sigterm checkpointed` line); raw:
   `criu dump -t ROOT` with the CRIU options the agent would use
   (`podckpt.agent.criu.common_args`, the agent's ghost limit, the workload's options), then
   the sandbox is killed;
3. a new sandbox: the agent restores by itself; raw: `criu restore -d` with the same options;
4. SIGTERM to the test (its pid from the pidfile), which checks its state and writes PASS
   or FAIL into TEST.out (zdtm's own verdict, as zdtm.py reads it).

The raw side is not the agent's code path but CRIU's own CLI with the agent's options, so
the agent can only match it by handling what CRIU leaves to its caller (stdio, PIDs, stopped
tasks, the IPC namespace) correctly.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

from podckpt.agent import criu as agent_criu
from podckpt.agent.capabilities import CAP_NUMBERS, criu_privileged
from podckpt.api import contract
from podckpt.api.criuopts import Phase, for_phase
from podckpt.api.criuopts import capabilities_for as capabilities_for_options
from podckpt.devtools.sandbox import Bind, Sandbox, SandboxError, wait_for

SandboxFactory = Callable[..., Sandbox]
REPO_SRC = Path(__file__).resolve().parents[3]
#: How long a test may take to become ready, and to finish once signalled.
START_TIMEOUT = 20.0
FINISH_TIMEOUT = 20.0


@dataclasses.dataclass(frozen=True)
class Case:
    """A zdtm test as one application: its argv and what it asks of CRIU."""

    name: str
    args: tuple[str, ...] = ()
    #: CRIU options the test needs (its .desc: opts + dopts, opts + ropts), canonical names
    #: of podckpt.api.criuopts.
    dump_options: tuple[str, ...] = ()
    restore_options: tuple[str, ...] = ()
    #: It uses System V IPC: an own IPC namespace (the agent's checkpoint-ipc-namespace).
    private_ipc: bool = False

    @property
    def needs_options(self) -> bool:
        return bool(self.dump_options or self.restore_options or self.private_ipc)

    @property
    def argv(self) -> list[str]:
        return [
            "/zdtm/zdtm-wrap",
            f"/zdtm/static/{self.name}",
            f"--pidfile={self.name}.pid",
            f"--outfile={self.name}.out",
            *self.args,
        ]


@dataclasses.dataclass(frozen=True)
class Outcome:
    passed: bool
    #: Where it ended: passed, start, dump, restore, check.
    stage: str
    detail: str = ""
    seconds: float = 0.0
    #: How many runs it took (a retried discrepancy: suite.run).
    attempts: int = 1

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


#: What containerd gives a container (the Kubernetes default), plus the agent's required set:
#: what a checkpointed container gets from the webhook when it asks for nothing more.
RUNTIME_DEFAULT = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip


def capabilities_for(case: Case, *, with_options: bool) -> list[str]:
    """The container's capabilities, as the webhook would give them: the defaults and the
    agent's required set, plus what the test's options cost (NET_ADMIN for tcp-established,
    SYS_ADMIN for an own IPC namespace). Raw CRIU runs with exactly the same."""
    caps = {*RUNTIME_DEFAULT, *contract.REQUIRED_CAPABILITIES}
    if with_options:
        caps.update(capabilities_for_options((*case.dump_options, *case.restore_options)))
        if case.private_ipc:
            caps.update(contract.ISOLATION_CAPABILITIES)
    return sorted(caps)


@dataclasses.dataclass
class Runner:
    rootfs: Path
    build: Path
    factory: SandboxFactory
    #: The agent's sources (another checkout's `src/` measures another version of it).
    agent_src: Path = REPO_SRC

    def _binds(self, work: Path, store: Path) -> list[Bind]:
        return [
            Bind(self.build, "/zdtm", True),
            Bind(self.agent_src, "/opt/podckpt", True),
            Bind(work, "/work"),
            Bind(store, "/store"),
        ]

    def _sandbox(self, argv: list[str], work: Path, store: Path, caps: list[str]) -> Sandbox:
        return self.factory(
            self.rootfs,
            argv,
            binds=self._binds(work, store),
            env={"PYTHONPATH": "/opt/podckpt", "PYTHONDONTWRITEBYTECODE": "1"},
            capabilities=caps,
            workdir="/work",
        )

    # -- the agent's side ---------------------------------------------------------------------

    def agent(self, case: Case, work: Path, *, with_options: bool) -> Outcome:
        """The test as the agent's application, with its needs given through the keys (an
        annotations file) when `with_options`."""
        timer = time.monotonic()
        store = work.parent / f"{work.name}-store"
        store.mkdir(exist_ok=True)
        args = ["--store", "/store/app", "--container", "app"]
        if with_options and case.needs_options:
            annotations = {}
            if case.dump_options:
                annotations["memverge.ai/checkpoint-advanced-options"] = ",".join(case.dump_options)
            if case.restore_options:
                annotations["memverge.ai/restore-advanced-options"] = ",".join(case.restore_options)
            if case.private_ipc:
                annotations["memverge.ai/checkpoint-ipc-namespace"] = "private"
            (store / "annotations").write_text(
                "".join(f"{k}={json.dumps(v)}\n" for k, v in annotations.items())
            )
            args += ["--annotations-file", "/store/annotations"]
        argv = ["python3", "-m", "podckpt.agent", "run", *args, "--", *case.argv]

        def elapsed() -> float:
            return round(time.monotonic() - timer, 2)

        caps = capabilities_for(case, with_options=with_options)
        first = self._sandbox(argv, work, store, caps)
        try:
            if not self._ready(case, work, first):
                return Outcome(False, "start", _progress(case, work) or _tail(first), elapsed())
            first.stop(30)
            # The agent's own line says it (its exit code does too, ExitCode.CHECKPOINTED,
            # but the line also says why not).
            if not _checkpointed(first):
                return Outcome(False, "dump", _agent_error(first, "dump"), elapsed())
        finally:
            first.destroy()
        second = self._sandbox(argv, work, store, caps)
        try:
            if not wait_for(lambda: _phase(second) is not None, START_TIMEOUT):
                return Outcome(False, "restore", _tail(second), elapsed())
            if _phase(second) != "restored":
                return Outcome(False, "restore", _agent_error(second, "restore"), elapsed())
            return self._finish(case, work, second, elapsed)
        finally:
            second.destroy()

    # -- raw CRIU's side ----------------------------------------------------------------------

    def criu_options(self, case: Case, phase: Phase, *, with_options: bool) -> list[str]:
        """The agent's CRIU options (criu.common_args, its ghost limit) and, `with_options`,
        the test's own, as zdtm gives them: opts + dopts to the dump, opts + ropts to the
        restore."""
        asked = case.dump_options if phase is Phase.DUMP else case.restore_options
        options = for_phase(asked, phase) if with_options else ()
        # The agent's choice of mode, from the same capabilities (never privileged with these).
        caps = capabilities_for(case, with_options=with_options)
        mask = sum(1 << CAP_NUMBERS[c] for c in caps if c in CAP_NUMBERS)
        privileged = criu_privileged(mask)
        common = agent_criu.common_args(privileged=privileged, options=options)
        if phase is Phase.DUMP and not any(o.startswith("ghost-limit=") for o in options):
            common.append(f"--ghost-limit={64 << 20}")
        return common

    def raw(self, case: Case, work: Path, *, with_options: bool) -> Outcome:
        timer = time.monotonic()
        store = work.parent / f"{work.name}-store"
        (store / "images").mkdir(parents=True, exist_ok=True)
        ipc = ["--ipc"] if with_options and case.private_ipc else []

        def elapsed() -> float:
            return round(time.monotonic() - timer, 2)

        init = ["python3", "/zdtm/rawinit.py"]
        caps = capabilities_for(case, with_options=with_options)
        first = self._sandbox([*init, "start", "/work", *ipc, *case.argv], work, store, caps)
        try:
            if not self._ready(case, work, first):
                return Outcome(False, "start", _progress(case, work) or _tail(first), elapsed())
            root = (work / ".raw-root").read_text().strip()
            dump = first.exec(
                ["criu", "dump", "-t", root, "-D", "/store/images", "-o", "dump.log", "-v4",
                 *self.criu_options(case, Phase.DUMP, with_options=with_options)],
                timeout=120,
            )  # fmt: skip
            if dump.returncode != 0:
                return Outcome(False, "dump", _criu_error(store / "images" / "dump.log"), elapsed())
        finally:
            first.destroy()
        (work / ".raw-exit").unlink(missing_ok=True)  # the dumped tree was killed
        second = self._sandbox([*init, "wait", "/work"], work, store, caps)
        try:
            restore = second.exec(
                ["criu", "restore", "-d", "-D", "/store/images", "-o", "restore.log", "-v4",
                 *self.criu_options(case, Phase.RESTORE, with_options=with_options)],
                timeout=120,
            )  # fmt: skip
            if restore.returncode != 0:
                log = store / "images" / "restore.log"
                return Outcome(False, "restore", _criu_error(log), elapsed())
            return self._finish(case, work, second, elapsed)
        finally:
            second.destroy()

    # -- shared -------------------------------------------------------------------------------

    def _ready(self, case: Case, work: Path, box: Sandbox) -> bool:
        """The test wrote its pidfile (it is ready to be dumped); False when it ended first
        (the agent exits with it; rawinit writes .raw-exit)."""
        pidfile = work / f"{case.name}.pid"
        ended = work / ".raw-exit"
        wait_for(lambda: pidfile.exists() or ended.exists() or not box.alive(), START_TIMEOUT)
        return pidfile.exists() and box.alive()

    def _finish(
        self, case: Case, work: Path, box: Sandbox, elapsed: Callable[[], float]
    ) -> Outcome:
        """SIGTERM to the test (zdtm's "stop"), then its verdict. The pidfile was written
        before the dump; a test that already ended after the restore removed it."""
        pidfile = work / f"{case.name}.pid"
        pid = pidfile.read_text().strip() if pidfile.exists() else ""
        if pid:
            try:
                box.exec(["kill", "-TERM", pid], timeout=30)
            except SandboxError as exc:
                return Outcome(False, "check", f"cannot signal the test: {exc}", elapsed())
        out = work / f"{case.name}.out"
        # The test renames its .out.inprogress when it exits; a test killed instead leaves
        # none, and then the tree is gone too (the agent exits with its root).
        raw_exit = work / ".raw-exit"
        wait_for(lambda: out.exists() or raw_exit.exists() or not box.alive(), FINISH_TIMEOUT)
        if not wait_for(out.exists, 1.0):
            return Outcome(False, "check", "no result: " + _progress(case, work), elapsed())
        text = out.read_text(errors="replace")
        if "PASS" in text.split():
            return Outcome(True, "passed", "", elapsed())
        return Outcome(False, "check", text[-300:].strip(), elapsed())


def _records(box: Sandbox) -> list[dict[str, object]]:
    found = []
    for line in box.stderr_text().splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("agent") == "podckpt":
                found.append(record)
    return found


def _checkpointed(box: Sandbox) -> bool:
    return any(r.get("phase") == "sigterm" and r.get("outcome") == "checkpointed"
               for r in _records(box))  # fmt: skip


def _phase(box: Sandbox) -> str | None:
    """restored / fresh / failed, from the agent's log, once it decided."""
    for line in box.stderr_text().splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        match record.get("phase"), record.get("outcome"):
            case "restore", "ok":
                return "restored"
            case "fresh-start", _:
                return "fresh"
            case "start", "failed":
                return "failed"
    return None


def _agent_error(box: Sandbox, phase: str) -> str:
    errors = []
    for line in box.stderr_text().splitlines():
        if line.startswith("{") and f'"phase":"{phase}"' in line and '"failed"' in line:
            try:
                errors.append(str(json.loads(line).get("error", "")))
            except ValueError:
                continue
    return (errors[-1] if errors else _tail(box))[-400:]


def _progress(case: Case, work: Path) -> str:
    """What the test wrote so far (zdtm's log: its own errors)."""
    for name in (f"{case.name}.out.inprogress", f"{case.name}.out"):
        path = work / name
        if path.exists():
            return path.read_text(errors="replace")[-400:].strip()
    return ""


def _criu_error(log: Path) -> str:
    lines = agent_criu.log_tail(log)
    return " | ".join(lines)[-400:] if lines else f"(no error lines in {log.name})"


def _tail(box: Sandbox) -> str:
    return (box.stderr_text() + box.stdout_text())[-400:].strip()
