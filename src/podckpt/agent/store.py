"""The checkpoint store of one container (ARCHITECTURE §5), on the checkpoint volume.

    <store>/store.json                 layout version + container name (checked on every open)
    <store>/generations/<UTC>-<seq>/   images/, files/, files.json, dump.log, manifest.json
    <store>/LATEST                     name of the newest committed generation
    <store>/COMPLETED                  the application exited by itself: never restore
    <store>/.lock                      flock held around every dump and restore

A generation counts only once its manifest (checksums of every file, manifest.py) is written
and fsynced and LATEST is renamed to it. A dump killed halfway leaves a directory without
manifest (or a manifest newer than LATEST): ignored, and removed at the next start. A
generation that was restored gets a RESTORED marker (it and all older ones are never restored
again: the application has moved on); one that failed to restore gets a FAILED marker. Markers
live outside the manifest, so nothing the agent does after a commit rewrites a committed file.

Checkpoints are process memory (tokens, keys, passwords): the store's directories are 0700 and
its files 0600, owned by root, whatever the volume's defaults (docs/security.md). A generation
is removed by renaming it out of the way first (`.trash-*`), so an interrupted removal never
leaves a half-deleted generation that looks committed. Everything read back from the volume is
read defensively (inputs.py): damage or tampering costs at most the generation concerned.

The names of the layout are generations.py's; the commit is storecommit.py; markers, retiring,
pruning and removals are retention.py (a mixin of `Store`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from .errors import StoreLockTimeout, StoreMismatchError, store_write_error
from .fsio import DIR_MODE, FILE_MODE, private_dir, write_atomic
from .generations import (
    COMPLETED,
    FAILED,
    GENERATIONS,
    LATEST,
    LAYOUT_VERSION,
    LOCK,
    MANIFEST,
    RESTORED,
    STORE_JSON,
    Generation,
    generation_seq,
)
from .inputs import BadInput, Missing, read_object, read_token
from .manifest import Manifest, Trust
from .retention import Retention
from .storecommit import commit_generation

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .integrity import Digest
    from .log import Timer


class Store(Retention):
    """One container's store: opening it, its lock, reading its generations, and writing a
    new one (begin, commit); markers and removals are `Retention`'s (retention.py)."""

    def __init__(self, root: Path, container: str, trust: Trust | None = None) -> None:
        self.root = Path(root)
        self.container = container
        self.trust = trust or Trust()
        self.generations_dir = self.root / GENERATIONS
        #: Why LATEST could not be used, when it could not (then manifests decide).
        self.latest_problem: str | None = None

    @property
    def store_id(self) -> str:
        """`<identity>/<container>`: bound into every manifest's HMAC, so that a generation
        moved into another workload's store is refused (the volume's mount point may change
        between releases, this does not)."""
        return f"{self.root.parent.name}/{self.root.name}"

    # -- opening and identity ------------------------------------------------------------

    def open(self) -> str | None:
        """Create the store on first use. Refuse (StoreMismatchError) another container's
        store or a layout this agent does not know, and never touch it then. A store.json that
        is not even a JSON object is damage, not a newer layout: it is rewritten, and the
        returned note says so (the generations are checked one by one anyway)."""
        meta_path = self.root / STORE_JSON
        note = None
        try:
            if self.root.is_symlink():
                raise StoreMismatchError(f"store {self.root} is a symbolic link; refusing it")
            meta = read_object(meta_path)
        except Missing:
            meta = None
        except BadInput as exc:
            meta = None
            note = f"{exc}; rewritten (generations are verified one by one)"
        if meta is not None:
            layout = meta.get("layout")
            if layout != LAYOUT_VERSION or type(layout) is not int:
                raise StoreMismatchError(
                    f"store {self.root} has unknown layout version {layout!r}"
                    f" ({meta_path}); this agent knows version {LAYOUT_VERSION}"
                )
            if meta.get("container") != self.container:
                raise StoreMismatchError(
                    f"store {self.root} belongs to container {meta.get('container')!r},"
                    f" not {self.container!r} ({meta_path})"
                )
            try:
                self._make_private()
            except OSError as exc:
                raise store_write_error(self.root, exc, "securing the store") from exc
            return None
        try:
            self._make_private()
            import json  # noqa: PLC0415

            body = {"layout": LAYOUT_VERSION, "container": self.container}
            write_atomic(meta_path, (json.dumps(body, indent=1) + "\n").encode())
        except OSError as exc:
            raise store_write_error(self.root, exc, "creating the store") from exc
        return note

    def _make_private(self) -> None:
        """The identity directory, the store and its generations directory, all 0700."""
        if not self.root.parent.exists():
            # The identity directory (`<volume>/<identity>`); an existing parent is left as
            # it is: it may be a directory of the application's own.
            self.root.parent.parent.mkdir(parents=True, exist_ok=True)
            private_dir(self.root.parent)
        private_dir(self.root)
        private_dir(self.generations_dir)

    @contextlib.contextmanager
    def lock(self, timeout: float = 120.0) -> Iterator[None]:
        """Exclusive flock, so a new pod's restore waits for the old pod's dump to commit."""
        path = self.root / LOCK
        flags = os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, FILE_MODE)
        except OSError:
            try:
                fd = os.open(path, os.O_RDONLY | flags)
            except OSError as exc:
                raise store_write_error(self.root, exc, "opening the lock file") from exc
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreLockTimeout(
                            f"store {self.root} stayed locked by another agent for {timeout:.0f}s"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    # -- reading -------------------------------------------------------------------------

    def generation(self, name: str) -> Generation:
        return Generation(name, self.generations_dir / name)

    def all_generations(self) -> list[Generation]:
        """Every generation directory, oldest first (by sequence number, not by clock)."""
        try:
            names = os.listdir(self.generations_dir)
        except OSError:
            return []
        gens = [self.generation(n) for n in names if generation_seq(n) is not None]
        return sorted(gens, key=lambda g: g.seq)

    def _has_manifest(self, gen: Generation) -> bool:
        return os.path.lexists(gen.path / MANIFEST)

    def latest_name(self) -> str | None:
        """LATEST's generation; None when there is none yet.

        A LATEST that cannot be read or is not a generation name is damage: `latest_problem`
        says so, and the newest generation with a manifest counts instead. So it does when
        LATEST names a generation that is gone (retired after a restore): then only a dump
        killed between its manifest and LATEST can be newer, and a written manifest means
        its files were fsynced. Checksums are verified before any restore either way."""
        self.latest_problem = None
        try:
            name = read_token(self.root / LATEST)
        except Missing:
            return None
        except BadInput as exc:
            self.latest_problem = str(exc)
        else:
            if generation_seq(name) is None:
                self.latest_problem = f"{self.root / LATEST}: names no generation ({name[:80]!r})"
            elif os.path.isdir(self.generations_dir / name):
                return name
        with_manifest = [g for g in self.all_generations() if self._has_manifest(g)]
        return with_manifest[-1].name if with_manifest else None

    def completed(self) -> bool:
        return os.path.lexists(self.root / COMPLETED)

    def committed(self) -> list[Generation]:
        """Generations with a manifest, up to LATEST, oldest first."""
        latest = self.latest_name()
        if latest is None:
            return []
        limit = generation_seq(latest) or 0
        return [g for g in self.all_generations() if g.seq <= limit and self._has_manifest(g)]

    def candidates(self) -> list[Generation]:
        """What a start may restore, newest first: committed, never restored, never failed."""
        if self.completed():
            return []
        result = []
        for gen in reversed(self.committed()):
            if os.path.lexists(gen.path / RESTORED):
                break  # it and everything older belong to the past of the running application
            if not os.path.lexists(gen.path / FAILED):
                result.append(gen)
        return result

    def unrestored(self) -> list[Generation]:
        """Committed generations that are not history: candidates plus FAILED ones (what
        `restore-policy: strict` refuses to give up on)."""
        if self.completed():
            return []
        result = []
        for gen in reversed(self.committed()):
            if os.path.lexists(gen.path / RESTORED):
                break
            result.append(gen)
        return result

    def read_manifest(self, gen: Generation) -> Manifest:
        """The generation's manifest, authenticated and validated (verify.py)."""
        from . import verify  # noqa: PLC0415 - only when a generation is checked

        return verify.read_manifest(self, gen)

    def check(self, gen: Generation) -> Manifest:
        """The manifest, once the generation holds exactly the files it lists (verify.py)."""
        from . import verify  # noqa: PLC0415

        return verify.check(self, gen)

    def verify_contents(
        self,
        gen: Generation,
        manifest: Manifest,
        only: str = "",
        exclude: Callable[[str], bool] | None = None,
    ) -> None:
        """Every listed file (under the path prefix `only`, not those `exclude` selects) has
        its digest (verify.py)."""
        from . import verify  # noqa: PLC0415

        verify.verify_contents(self, gen, manifest, only, exclude)

    def verify(self, gen: Generation) -> Manifest:
        """check + verify_contents: the manifest of a generation that is whole."""
        from . import verify  # noqa: PLC0415

        return verify.verify(self, gen)

    # -- writing -------------------------------------------------------------------------

    def begin(self) -> Generation:
        """A new, empty generation directory with the next sequence number."""
        existing = self.all_generations()
        seq = existing[-1].seq + 1 if existing else 1
        latest = self.latest_name()
        if latest is not None:
            seq = max(seq, (generation_seq(latest) or 0) + 1)
        name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{seq:06d}"
        gen = self.generation(name)
        try:
            private_dir(self.generations_dir)
            os.mkdir(gen.path, DIR_MODE)
            os.mkdir(gen.images, DIR_MODE)
        except OSError as exc:
            raise store_write_error(self.root, exc, f"creating generation {name}") from exc
        return gen

    def commit(
        self,
        gen: Generation,
        fields: dict[str, Any],
        digests: Mapping[str, Digest] | None = None,
        moving: Timer | None = None,
    ) -> dict[str, Any]:
        """Checksum and secure (root, 0600/0700) every file, make them durable, write the
        manifest last, then move LATEST to it (storecommit.py)."""
        return commit_generation(self, gen, fields, digests, moving)

    def free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize
