"""Committing a generation: the one way a dump becomes restorable (store.Store.commit).

Every file is checksummed and secured (root, 0600/0700) and all are made durable at once
(durable.py), then the manifest is written, then LATEST is renamed to the generation, each
atomically. A kill at any point leaves LATEST on the previous generation or on a complete new
one, so a failed checkpoint never damages the previous one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import manifest as manifest_format
from .errors import store_write_error
from .fsio import DIR_MODE, FILE_MODE, fsync_dir, hash_fd, secure, write_atomic
from .generations import COMPLETED, LATEST, MANIFEST

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from .generations import Generation
    from .integrity import Digest
    from .log import Timer
    from .store import Store


def commit_generation(
    store: Store,
    gen: Generation,
    fields: dict[str, Any],
    digests: Mapping[str, Digest] | None,
    moving: Timer | None,
) -> dict[str, Any]:
    """Checksum and secure every file of `gen`, make them durable, write the manifest last,
    then move LATEST to it.

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
            "container": store.container,
            "store": store.store_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **fields,
            "total_bytes": total,
            **throughput,
            "checksums": checksums,
        }
        sealed = manifest_format.seal(body, store.trust)
        write_atomic(gen.path / MANIFEST, sealed)
        fsync_dir(store.generations_dir)
        write_atomic(store.root / LATEST, (gen.name + "\n").encode())
        completed = store.root / COMPLETED
        if os.path.lexists(completed):
            completed.unlink()
            fsync_dir(store.root)
    except OSError as exc:
        raise store_write_error(store.root, exc, f"committing generation {gen.name}") from exc
    manifest: dict[str, Any] = json.loads(sealed)
    return manifest
