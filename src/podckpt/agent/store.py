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
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from . import manifest as manifest_format
from .errors import StoreError, StoreLockTimeout, StoreMismatchError, StoreWriteError
from .fsio import (
    DIR_MODE,
    FILE_MODE,
    fsync_dir,
    hash_fd,
    private_dir,
    rmtree,
    secure,
    write_atomic,
)
from .inputs import BadInput, Missing, read_object, read_token
from .manifest import Manifest, Trust

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .integrity import Digest
    from .log import Timer

LAYOUT_VERSION = 1
MANIFEST_FORMAT = manifest_format.FORMAT
STORE_JSON = "store.json"
GENERATIONS = "generations"
LATEST = "LATEST"
COMPLETED = "COMPLETED"
LOCK = ".lock"
MANIFEST = "manifest.json"
RESTORED = "RESTORED"
FAILED = "FAILED"
TRASH_PREFIX = ".trash-"
_NAME = re.compile(r"^[0-9]{8}T[0-9]{6}Z-([0-9]{6,12})$")


def generation_seq(name: str) -> int | None:
    """The sequence number of a generation directory name, None for anything else."""
    match = _NAME.match(name)
    return int(match[1]) if match else None


@dataclasses.dataclass(frozen=True)
class Generation:
    name: str
    path: Path

    @property
    def seq(self) -> int:
        return generation_seq(self.name) or 0

    @property
    def images(self) -> Path:
        return self.path / "images"

    @property
    def files(self) -> Path:
        return self.path / "files"


@dataclasses.dataclass(frozen=True)
class Removed:
    """A generation the agent removed on its own, and why (for the log line)."""

    name: str
    why: str


def _store_write_error(store: Path, exc: OSError, what: str) -> StoreWriteError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreWriteError(f"checkpoint store {store} is full ({what}): {exc.strerror}")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StoreWriteError(f"checkpoint store {store} is not writable ({what}): {exc.strerror}")
    return StoreWriteError(f"checkpoint store {store}: {what} failed: {exc}")


class Store:
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
                raise _store_write_error(self.root, exc, "securing the store") from exc
            return None
        try:
            self._make_private()
            import json  # noqa: PLC0415

            body = {"layout": LAYOUT_VERSION, "container": self.container}
            write_atomic(meta_path, (json.dumps(body, indent=1) + "\n").encode())
        except OSError as exc:
            raise _store_write_error(self.root, exc, "creating the store") from exc
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
                raise _store_write_error(self.root, exc, "opening the lock file") from exc
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
            raise _store_write_error(self.root, exc, f"creating generation {name}") from exc
        return gen

    def commit(
        self,
        gen: Generation,
        fields: dict[str, Any],
        digests: Mapping[str, Digest] | None = None,
        moving: Timer | None = None,
    ) -> dict[str, Any]:
        """Checksum and secure (root, 0600/0700) every file, make them durable, write the
        manifest last, then move LATEST to it.

        `digests`: the page images hashed while CRIU wrote them (integrity.ImageHasher); every
        other file is hashed here. Durability: every file and directory of the generation is
        fsynced at once (durable.py), then the manifest, then LATEST, each written atomically.
        A kill at any point leaves LATEST on the previous generation or on a complete new one.
        `moving` started when the bytes started to move (CRIU's dump): the manifest records
        the throughput of dump + checksums + flush (deadline.py)."""
        import json  # noqa: PLC0415

        from .durable import fsync_all  # noqa: PLC0415 - only when a dump runs

        digests = digests or {}
        try:
            checksums: dict[str, dict[str, object]] = {}
            to_sync: list[tuple[int, Path]] = []
            dirs: list[Path] = [gen.path]
            total = 0
            for dirpath, dirnames, filenames in os.walk(gen.path):
                base = Path(dirpath)
                for filename in sorted(filenames):
                    path = base / filename
                    rel = str(path.relative_to(gen.path))
                    if rel in manifest_format.UNCHECKED or path.is_symlink():
                        continue
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                    try:
                        secure(fd, FILE_MODE)
                        known = digests.get(rel)
                        if known is not None and known.size == os.fstat(fd).st_size:
                            size, entry = known.size, known.entry()
                        else:
                            size, digest = hash_fd(fd)
                            entry = {"size": size, "sha256": digest}
                    finally:
                        os.close(fd)
                    checksums[rel] = entry
                    to_sync.append((size, path))
                    total += size
                for dirname in dirnames:
                    fd = os.open(base / dirname, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                    try:
                        secure(fd, DIR_MODE)
                    finally:
                        os.close(fd)
                    dirs.append(base / dirname)
            to_sync.sort(key=lambda item: item[0])
            fsync_all([path for _, path in to_sync], dirs)
            throughput: dict[str, Any] = {}
            if moving is not None:
                seconds = moving.elapsed()
                throughput["throughput"] = {
                    "bytes_per_s": int(total / seconds) if seconds > 0 else None,
                    "seconds": round(seconds, 4),
                    "bytes": total,
                }
            body = {
                "generation": gen.name,
                "container": self.container,
                "store": self.store_id,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **fields,
                "total_bytes": total,
                **throughput,
                "checksums": checksums,
            }
            sealed = manifest_format.seal(body, self.trust)
            write_atomic(gen.path / MANIFEST, sealed)
            fsync_dir(self.generations_dir)
            write_atomic(self.root / LATEST, (gen.name + "\n").encode())
            completed = self.root / COMPLETED
            if os.path.lexists(completed):
                completed.unlink()
                fsync_dir(self.root)
        except OSError as exc:
            raise _store_write_error(self.root, exc, f"committing generation {gen.name}") from exc
        manifest: dict[str, Any] = json.loads(sealed)
        return manifest

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
            raise _store_write_error(self.root, exc, "writing COMPLETED") from exc
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

    def free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize
