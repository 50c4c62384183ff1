"""The checkpoint store of one container (ARCHITECTURE §5), on the checkpoint volume.

    <store>/store.json                 layout version + container name (checked on every open)
    <store>/generations/<UTC>-<seq>/   images/, files/, files.json, dump.log, manifest.json
    <store>/LATEST                     name of the newest committed generation
    <store>/COMPLETED                  the application exited by itself: never restore
    <store>/.lock                      flock held around every dump and restore

A generation counts only once its manifest (checksums of every file) is written and fsynced
and LATEST is renamed to it. A dump killed halfway leaves a directory without manifest (or a
manifest newer than LATEST): ignored, and removed at the next start. A generation that was
restored gets a RESTORED marker (it and all older ones are never restored again: the
application has moved on); one that failed to restore gets a FAILED marker. Markers live outside
the manifest, so nothing the agent does after a commit rewrites a committed file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import (
    GenerationInvalidError,
    StoreError,
    StoreLockTimeout,
    StoreMismatchError,
    StoreWriteError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

LAYOUT_VERSION = 1
MANIFEST_FORMAT = 1
STORE_JSON = "store.json"
GENERATIONS = "generations"
LATEST = "LATEST"
COMPLETED = "COMPLETED"
LOCK = ".lock"
MANIFEST = "manifest.json"
RESTORED = "RESTORED"
FAILED = "FAILED"
_MARKERS = frozenset({MANIFEST, RESTORED, FAILED, "restore.log"})
_CHUNK = 1 << 20


def generation_seq(name: str) -> int | None:
    """The sequence number of a generation directory name, None for anything else."""
    head, sep, tail = name.rpartition("-")
    if not sep or not head or not tail.isdigit():
        return None
    return int(tail)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write-temp, fsync, rename, fsync the directory: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _rmtree(path: Path) -> None:
    import shutil  # noqa: PLC0415 - rarely needed, and not before the application starts

    shutil.rmtree(path, ignore_errors=True)


def hash_file(path: Path, *, fsync: bool = False) -> tuple[int, str]:
    """Size and sha256 of a file; optionally fsync it while it is open anyway."""
    import hashlib  # noqa: PLC0415 - not needed before the application starts

    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if fsync:
            os.fsync(handle.fileno())
    return size, digest.hexdigest()


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


def _store_write_error(store: Path, exc: OSError, what: str) -> StoreWriteError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreWriteError(f"checkpoint store {store} is full ({what}): {exc.strerror}")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StoreWriteError(f"checkpoint store {store} is not writable ({what}): {exc.strerror}")
    return StoreWriteError(f"checkpoint store {store}: {what} failed: {exc}")


class Store:
    def __init__(self, root: Path, container: str) -> None:
        self.root = Path(root)
        self.container = container
        self.generations_dir = self.root / GENERATIONS

    # -- opening and identity ------------------------------------------------------------

    def open(self) -> None:
        """Create the store on first use; refuse another container's store or layout."""
        meta_path = self.root / STORE_JSON
        try:
            text = meta_path.read_text()
        except FileNotFoundError:
            text = None
        except OSError as exc:
            raise StoreError(f"cannot read {meta_path}: {exc.strerror}") from exc
        if text is not None:
            try:
                meta = json.loads(text)
            except json.JSONDecodeError:
                raise StoreMismatchError(f"{meta_path} is not valid JSON") from None
            layout = meta.get("layout") if isinstance(meta, dict) else None
            if layout != LAYOUT_VERSION:
                raise StoreMismatchError(
                    f"store {self.root} has unknown layout version {layout!r};"
                    f" this agent knows version {LAYOUT_VERSION}"
                )
            if meta.get("container") != self.container:
                raise StoreMismatchError(
                    f"store {self.root} belongs to container {meta.get('container')!r},"
                    f" not {self.container!r}"
                )
            return
        try:
            self.generations_dir.mkdir(parents=True, exist_ok=True)
            body = {"layout": LAYOUT_VERSION, "container": self.container}
            write_atomic(meta_path, (json.dumps(body, indent=1) + "\n").encode())
        except OSError as exc:
            raise _store_write_error(self.root, exc, "creating the store") from exc

    @contextlib.contextmanager
    def lock(self, timeout: float = 120.0) -> Iterator[None]:
        """Exclusive flock, so a new pod's restore waits for the old pod's dump to commit."""
        path = self.root / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
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
        except FileNotFoundError:
            return []
        gens = [self.generation(n) for n in names if generation_seq(n) is not None]
        return sorted(gens, key=lambda g: g.seq)

    def latest_name(self) -> str | None:
        try:
            name = (self.root / LATEST).read_text().strip()
        except FileNotFoundError:
            return None
        return name if generation_seq(name) is not None else None

    def completed(self) -> bool:
        return (self.root / COMPLETED).exists()

    def committed(self) -> list[Generation]:
        """Generations with a manifest, up to LATEST, oldest first."""
        latest = self.latest_name()
        if latest is None:
            return []
        limit = generation_seq(latest) or 0
        return [
            g for g in self.all_generations() if g.seq <= limit and (g.path / MANIFEST).exists()
        ]

    def candidates(self) -> list[Generation]:
        """What a start may restore, newest first: committed, never restored, never failed."""
        if self.completed():
            return []
        result = []
        for gen in reversed(self.committed()):
            if (gen.path / RESTORED).exists():
                break  # it and everything older belong to the past of the running application
            if not (gen.path / FAILED).exists():
                result.append(gen)
        return result

    def unrestored(self) -> list[Generation]:
        """Committed generations that are not history: candidates plus FAILED ones (what
        `restore-policy: strict` refuses to give up on)."""
        if self.completed():
            return []
        result = []
        for gen in reversed(self.committed()):
            if (gen.path / RESTORED).exists():
                break
            result.append(gen)
        return result

    def read_manifest(self, gen: Generation) -> dict[str, Any]:
        try:
            manifest = json.loads((gen.path / MANIFEST).read_text())
        except FileNotFoundError:
            raise GenerationInvalidError(
                gen.name, "no manifest (the dump did not finish)"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GenerationInvalidError(gen.name, f"unreadable manifest ({exc})") from None
        if not isinstance(manifest, dict):
            raise GenerationInvalidError(gen.name, "manifest is not a JSON object")
        return manifest

    def verify(self, gen: Generation) -> dict[str, Any]:
        """The manifest, once every file it lists has its size and checksum."""
        manifest = self.read_manifest(gen)
        if manifest.get("format") != MANIFEST_FORMAT:
            raise GenerationInvalidError(
                gen.name, f"unknown manifest format {manifest.get('format')!r}"
            )
        if manifest.get("container") != self.container:
            raise GenerationInvalidError(
                gen.name, f"made for container {manifest.get('container')!r}"
            )
        files = manifest.get("checksums")
        if not isinstance(files, dict) or not files:
            raise GenerationInvalidError(gen.name, "manifest lists no files")
        for rel, entry in sorted(files.items()):
            path = gen.path / rel
            try:
                size, digest = hash_file(path)
            except FileNotFoundError:
                raise GenerationInvalidError(gen.name, f"{rel} is missing") from None
            except OSError as exc:
                raise GenerationInvalidError(gen.name, f"{rel} unreadable: {exc}") from None
            if size != entry.get("size"):
                raise GenerationInvalidError(
                    gen.name,
                    f"{rel} is truncated or grown: {size} bytes, manifest says {entry.get('size')}",
                )
            if digest != entry.get("sha256"):
                raise GenerationInvalidError(gen.name, f"{rel} is corrupted (sha256 mismatch)")
        return manifest

    # -- writing -------------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        """Remove what a killed dump left behind: no manifest, or never made LATEST."""
        latest = self.latest_name()
        limit = generation_seq(latest) if latest else 0
        removed = []
        for gen in self.all_generations():
            if gen.seq > (limit or 0) or not (gen.path / MANIFEST).exists():
                _rmtree(gen.path)
                removed.append(gen.name)
        return removed

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
            self.generations_dir.mkdir(parents=True, exist_ok=True)
            gen.path.mkdir()
            gen.images.mkdir()
        except OSError as exc:
            raise _store_write_error(self.root, exc, f"creating generation {name}") from exc
        return gen

    def commit(self, gen: Generation, fields: dict[str, Any]) -> dict[str, Any]:
        """Checksum and fsync every file, write the manifest last, then move LATEST to it."""
        try:
            checksums: dict[str, dict[str, Any]] = {}
            total = 0
            for dirpath, dirnames, filenames in os.walk(gen.path):
                base = Path(dirpath)
                for filename in sorted(filenames):
                    path = base / filename
                    rel = str(path.relative_to(gen.path))
                    if rel in _MARKERS or path.is_symlink():
                        continue
                    size, digest = hash_file(path, fsync=True)
                    checksums[rel] = {"size": size, "sha256": digest}
                    total += size
                for dirname in dirnames:
                    fsync_dir(base / dirname)
            manifest = {
                "format": MANIFEST_FORMAT,
                "generation": gen.name,
                "container": self.container,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **fields,
                "total_bytes": total,
                "checksums": checksums,
            }
            write_atomic(gen.path / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
            fsync_dir(self.generations_dir)
            write_atomic(self.root / LATEST, (gen.name + "\n").encode())
            completed = self.root / COMPLETED
            if completed.exists():
                completed.unlink()
                fsync_dir(self.root)
        except OSError as exc:
            raise _store_write_error(self.root, exc, f"committing generation {gen.name}") from exc
        return manifest

    def discard(self, gen: Generation) -> None:
        """Remove a generation that was never committed (a failed dump)."""
        if gen.name == self.latest_name():
            raise StoreError(f"refusing to discard the committed generation {gen.name}")
        _rmtree(gen.path)

    def mark(self, gen: Generation, marker: str) -> None:
        # A marker is advice: if it cannot be written, the worst case is one more attempt.
        with contextlib.suppress(OSError):
            (gen.path / marker).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))

    def retire(self, upto: Generation | None, *, diagnosis: bool) -> None:
        """Never restore `upto` or anything older (all generations when None).

        Without diagnosis their directories are removed; with it they stay, marked."""
        for gen in self.all_generations():
            if upto is not None and gen.seq > upto.seq:
                continue
            if diagnosis:
                if not (gen.path / FAILED).exists():
                    self.mark(gen, RESTORED)
            else:
                _rmtree(gen.path)

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
            if diagnosis and ((gen.path / RESTORED).exists() or (gen.path / FAILED).exists()):
                continue
            _rmtree(gen.path)
            removed.append(gen.name)
        return removed

    def free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize
