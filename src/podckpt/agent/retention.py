"""What a store keeps and what it gives up: markers (RESTORED, FAILED), retiring the
generations an application has moved past, pruning to the newest `keep`, and removing what
is not (or no longer) a committed generation.

A mixin of `Store` (store.py). Every removal renames the generation out of the way first
(`.trash-*`), so an interrupted removal never leaves a half-deleted generation that looks
committed, and retiring marks before it removes, so a kill in between leaves history, never a
generation that looks restorable.
"""

from __future__ import annotations

import contextlib
import os
import time

from .errors import StoreError, store_write_error
from .fsio import FILE_MODE, rmtree, write_atomic
from .generations import (
    COMPLETED,
    FAILED,
    RESTORED,
    TRASH_PREFIX,
    Generation,
    Removed,
    generation_seq,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path


class Retention:
    """The store's removals and markers; reading the store is `Store`'s own."""

    root: Path
    generations_dir: Path

    if TYPE_CHECKING:
        # Reading the store (store.py).
        def latest_name(self) -> str | None: ...
        def all_generations(self) -> list[Generation]: ...
        def committed(self) -> list[Generation]: ...
        def _has_manifest(self, gen: Generation) -> bool: ...

    def cleanup(self) -> list[Removed]:
        """Remove what is not (or no longer) a committed generation, saying why for each: a
        dump that did not finish, or a committed generation whose manifest is gone."""
        self._empty_trash()
        latest = self.latest_name()
        limit = generation_seq(latest) if latest else 0
        removed = []
        for gen in self.all_generations():
            if gen.seq > (limit or 0):
                why = "not committed: a dump that did not finish (agent killed, store full)"
            elif not self._has_manifest(gen):
                why = "committed, but its manifest.json is gone (deleted or lost after the commit)"
            else:
                continue
            self._remove(gen)
            removed.append(Removed(gen.name, why))
        return removed

    def _remove(self, gen: Generation) -> None:
        """Rename out of the way, then delete: a removal killed halfway leaves `.trash-*`,
        never a generation without some of its files."""
        trash = self.generations_dir / f"{TRASH_PREFIX}{gen.name}-{os.getpid()}-{time.time_ns()}"
        try:
            os.rename(gen.path, trash)
        except FileNotFoundError:
            return
        except OSError:
            trash = gen.path
        rmtree(trash)

    def _empty_trash(self) -> None:
        try:
            names = os.listdir(self.generations_dir)
        except OSError:
            return
        for name in names:
            if name.startswith(TRASH_PREFIX):
                rmtree(self.generations_dir / name)

    def discard(self, gen: Generation) -> None:
        """Remove a generation that was never committed (a failed dump)."""
        if gen.name == self.latest_name():
            raise StoreError(f"refusing to discard the committed generation {gen.name}")
        self._remove(gen)

    def mark(self, gen: Generation, marker: str) -> None:
        # A marker is advice: if it cannot be written, the worst case is one more attempt.
        with contextlib.suppress(OSError):
            fd = os.open(
                gen.path / marker,
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                FILE_MODE,
            )
            try:
                os.write(fd, time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()).encode())
            finally:
                os.close(fd)

    def retire(self, upto: Generation | None, *, diagnosis: bool) -> None:
        """Never restore `upto` or anything older (all generations when None).

        Every one is marked RESTORED first (cheap), then, without diagnosis, removed: an agent
        killed in between leaves history, never a generation that looks restorable."""
        retired = [g for g in self.all_generations() if upto is None or g.seq <= upto.seq]
        for gen in reversed(retired):
            if not os.path.lexists(gen.path / FAILED):
                self.mark(gen, RESTORED)
        if not diagnosis:
            for gen in retired:
                self._remove(gen)

    def mark_completed(self, *, diagnosis: bool) -> None:
        try:
            write_atomic(self.root / COMPLETED, b"application exited by itself\n")
        except OSError as exc:
            raise store_write_error(self.root, exc, "writing COMPLETED") from exc
        self.retire(None, diagnosis=diagnosis)

    def prune(self, keep: int, *, diagnosis: bool) -> list[str]:
        """Keep the newest `keep` committed generations (with diagnosis also every restored or
        failed one, for their logs); remove the rest."""
        committed = self.committed()
        removed = []
        for gen in committed[: max(0, len(committed) - keep)]:
            if diagnosis and (
                os.path.lexists(gen.path / RESTORED) or os.path.lexists(gen.path / FAILED)
            ):
                continue
            self._remove(gen)
            removed.append(gen.name)
        return removed
