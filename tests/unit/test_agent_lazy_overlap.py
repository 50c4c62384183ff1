"""The restore started beside the lazy-pages daemon (criurestore._run_beside_the_daemon): run
again only when CRIU failed at the daemon's socket, and only after the daemon listens. The
effect with real CRIU is in tests/agent/test_lazy_restore.py (a daemon that listens late)."""

from __future__ import annotations

import pytest

from podckpt.agent import criu, criurestore
from podckpt.agent.errors import CriuFailedError

REFUSED = "Error (criu/uffd.c:312): connect to lazy-pages.socket failed: Connection refused"


class _Daemon:
    def __init__(self, listens: bool, fails: bool = False) -> None:
        self.listens, self.fails = listens, fails
        self.waited = 0
        self.restore_retried = False

    def listening(self) -> bool:
        return self.listens

    def wait_listening(self) -> None:
        self.waited += 1
        if self.fails:
            raise CriuFailedError("lazy-pages", 1, "lazy-pages.log", ["Error: kerndat"])
        self.listens = True


def _runs(*errors: str | None) -> tuple[list[tuple[str, ...]], object]:
    calls: list[tuple[str, ...]] = []
    outcomes = list(errors)

    def run(options: tuple[str, ...]) -> criu.CriuResult:
        calls.append(options)
        error = outcomes.pop(0)
        if error is not None:
            raise CriuFailedError("restore", 1, "restore.log", [error])
        return criu.CriuResult(0.1, {})

    return calls, run


def test_a_restore_that_found_no_socket_runs_again_once_the_daemon_listens() -> None:
    daemon = _Daemon(listens=False)
    calls, run = _runs(REFUSED, None)
    criurestore._run_beside_the_daemon(run, ("a",), daemon)  # type: ignore[arg-type]
    assert calls == [("a",), ("a",)]
    assert (daemon.waited, daemon.restore_retried) == (1, True)


def test_other_failures_and_a_failed_daemon_are_not_retried() -> None:
    calls, run = _runs("Error (criu/files.c:1): cannot open")
    with pytest.raises(CriuFailedError, match="cannot open"):
        criurestore._run_beside_the_daemon(run, (), _Daemon(listens=False))  # type: ignore[arg-type]
    assert len(calls) == 1
    calls, run = _runs(REFUSED, None)
    with pytest.raises(CriuFailedError, match="lazy-pages"):
        criurestore._run_beside_the_daemon(run, (), _Daemon(listens=False, fails=True))  # type: ignore[arg-type]
    assert len(calls) == 1


def test_a_listening_daemon_or_none_means_one_run() -> None:
    for daemon in (_Daemon(listens=True), None):
        calls, run = _runs(REFUSED)
        with pytest.raises(CriuFailedError):
            criurestore._run_beside_the_daemon(run, (), daemon)  # type: ignore[arg-type]
        assert len(calls) == 1
