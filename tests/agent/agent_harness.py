"""Helpers for the agent tests: the agent runs as a pod runs it, as PID 1 of a fresh sandbox.

`agent.start(...)` starts `python3 -m podckpt.agent run --store /store/app --container app
[--labels-file ...] -- ARGV` in a new sandbox with the repository's `src/` at /opt/podckpt,
the test applications at /apps and the host directory `agent.store_dir` at /store. A
"container death" is `sandbox.stop()`, a "recreation" is the next `agent.start(...)`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from podckpt.api import format_downward_text
from podckpt.devtools.sandbox import Bind, Sandbox, wait_for

REPO = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "apps"
MODE = "memverge.ai/checkpoint-mode"


def log_lines(sandbox: Sandbox) -> list[dict[str, Any]]:
    """The agent's JSON log lines on the sandbox's stderr (on its stdout too: a terminal or a
    file there carries both)."""
    lines = []
    text = sandbox.stderr_text() + "\n" + sandbox.stdout_text().replace("\r\n", "\n")
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("agent") == "podckpt":
                lines.append(record)
    return lines


def phases(sandbox: Sandbox, phase: str, outcome: str | None = None) -> list[dict[str, Any]]:
    return [
        r
        for r in log_lines(sandbox)
        if r["phase"] == phase and (outcome is None or r["outcome"] == outcome)
    ]


def counts(sandbox: Sandbox) -> list[int]:
    text = sandbox.stdout_text().replace("\r\n", "\n")
    return [int(m) for m in re.findall(r"^count (\d+)\b", text, re.MULTILINE)]


def wait_count(sandbox: Sandbox, minimum: int, timeout: float = 20) -> list[int]:
    assert wait_for(lambda: len(counts(sandbox)) >= minimum, timeout), (
        f"fewer than {minimum} counts; stdout={sandbox.stdout_text()[-500:]!r}"
        f" stderr={sandbox.stderr_text()[-2000:]!r}"
    )
    return counts(sandbox)


@dataclasses.dataclass
class AgentHarness:
    rootfs: Path
    factory: Callable[..., Sandbox]
    store_dir: Path
    labels_dir: Path

    def start(
        self,
        argv: Sequence[str],
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        agent_args: Sequence[str] = (),
        binds: Sequence[Bind] = (),
        env: dict[str, str] | None = None,
        capabilities: Sequence[str] | None = None,
        seccomp: bool = False,
        no_new_privs: bool = False,
        store: str = "/store/app",
        container: str = "app",
        entry: Sequence[str] = ("python3", "-m", "podckpt.agent"),
        tty: bool = False,
        stdout_file: Path | None = None,
        addresses: Sequence[str] = (),
    ) -> Sandbox:
        args = ["--store", store, "--container", container]
        if labels is not None:
            self.set_labels(labels)
            args += ["--labels-file", "/etc/podinfo/labels"]
        if annotations is not None:
            self.set_annotations(annotations)
            args += ["--annotations-file", "/etc/podinfo/annotations"]
        cmd = [*entry, "run", *args, *agent_args, "--", *argv]
        return self.factory(
            self.rootfs,
            cmd,
            binds=[
                Bind(REPO / "src", "/opt/podckpt", True),
                Bind(APPS, "/apps", True),
                Bind(self.store_dir, "/store"),
                Bind(self.labels_dir, "/etc/podinfo", True),
                *binds,
            ],
            env={"PYTHONPATH": "/opt/podckpt", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
            capabilities=capabilities,
            seccomp=seccomp,
            tty=tty,
            stdout_file=stdout_file,
            addresses=addresses,
            no_new_privs=no_new_privs,
        )

    def set_labels(self, labels: dict[str, str]) -> None:
        _write_atomic(self.labels_dir / "labels", format_downward_text(labels))

    def set_annotations(self, annotations: dict[str, str]) -> None:
        _write_atomic(self.labels_dir / "annotations", format_downward_text(annotations))

    @property
    def app_store(self) -> Path:
        return self.store_dir / "app"

    def latest(self) -> str | None:
        path = self.app_store / "LATEST"
        return path.read_text().strip() if path.exists() else None

    def checkpoint(self, sandbox: Sandbox, timeout: float = 60) -> str:
        """`kubectl exec ... podckpt-agent checkpoint`; returns the committed generation."""
        done = sandbox.exec(
            ["env", "PYTHONPATH=/opt/podckpt", "python3", "-m", "podckpt.agent", "checkpoint"],
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr.decode()
        match = re.search(r"checkpoint (\S+) committed", done.stdout.decode())
        assert match, done.stdout.decode()
        return match[1]


def _write_atomic(path: Path, text: str) -> None:
    """As the kubelet updates downward-API files: a new file swapped in."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def stop_and_wait(sandbox: Sandbox, grace: float = 30) -> int:
    started = time.monotonic()
    code = sandbox.stop(grace)
    assert time.monotonic() - started < grace, "the agent did not exit within the grace period"
    return code
