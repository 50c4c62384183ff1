"""Checking a generation before it is restored: its manifest (authenticated, manifest.py),
exactly the files it lists (no symlink, nothing planted, nothing missing, sizes), then their
digests. Everything is read without following a symbolic link inside the store (inputs.py).

`check` is cheap (only the manifest is read); `verify_contents` reads every listed file (or
those under a prefix, or all but those `exclude` names), so a restore hashes the small files
before CRIU reads the images and the page images while it does (integrity.py). Files digested
in chunks are hashed by several threads at once.
"""

from __future__ import annotations

import hmac
import os
import stat

from . import manifest as manifest_format
from .errors import GenerationInvalidError
from .fsio import hash_fd
from .inputs import LIST_LIMIT, BadInput, Missing, open_beneath, read_fd, walk_files
from .manifest import Manifest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .generations import Generation
    from .store import Store

MANIFEST = manifest_format.FILENAME


def read_manifest(store: Store, gen: Generation) -> Manifest:
    """The generation's manifest, authenticated and validated (manifest.py)."""
    try:
        fd = open_beneath(store.generations_dir, f"{gen.name}/{MANIFEST}")
    except Missing:
        raise GenerationInvalidError(
            gen.name, "no manifest (the dump did not finish, or it was removed)"
        ) from None
    except BadInput as exc:
        raise GenerationInvalidError(gen.name, exc.problem) from None
    try:
        data = read_fd(fd, gen.path / MANIFEST, LIST_LIMIT)
    except BadInput as exc:
        raise GenerationInvalidError(gen.name, f"manifest.json {exc.problem}") from None
    finally:
        os.close(fd)
    return manifest_format.parse(
        data,
        name=gen.name,
        container=store.container,
        store_id=store.store_id,
        trust=store.trust,
    )


def check(store: Store, gen: Generation) -> Manifest:
    """The manifest, once the generation holds exactly the files it lists, each a regular
    file (no symlink anywhere) of the listed size. Cheap: no file is read but the
    manifest. `verify` then checks contents."""
    manifest = read_manifest(store, gen)
    present: dict[str, os.stat_result] = {}
    for rel, st in walk_files(gen.path):
        if rel in manifest_format.UNCHECKED:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise GenerationInvalidError(gen.name, f"{rel} is a symbolic link")
        present[rel] = st
    for rel, entry in sorted(manifest.files.items()):
        if rel not in present:
            raise GenerationInvalidError(gen.name, f"{rel} is missing")
        st = present.pop(rel)
        if not stat.S_ISREG(st.st_mode):
            raise GenerationInvalidError(gen.name, f"{rel} is not a regular file")
        if st.st_size != entry.size:
            raise GenerationInvalidError(
                gen.name,
                f"{rel} is truncated or grown: {st.st_size} bytes, manifest says {entry.size}",
            )
    if present:
        extra = ", ".join(sorted(present)[:5])
        raise GenerationInvalidError(gen.name, f"files the manifest does not list: {extra}")
    return manifest


def verify_contents(
    store: Store,
    gen: Generation,
    manifest: Manifest,
    only: str = "",
    exclude: Callable[[str], bool] | None = None,
) -> None:
    """Every listed file (under `only`, a path prefix, when given; not those `exclude`
    selects) has its digest."""
    chunked = {}
    for rel, entry in sorted(manifest.files.items()):
        if not rel.startswith(only) or (exclude is not None and exclude(rel)):
            continue
        if entry.chunks is not None:
            chunked[rel] = entry
            continue
        try:
            fd = open_beneath(gen.path, rel)
        except BadInput as exc:
            raise GenerationInvalidError(gen.name, f"{rel} {exc.problem}") from None
        try:
            size, digest = hash_fd(fd, algorithm=entry.algorithm)
        except OSError as exc:
            raise GenerationInvalidError(gen.name, f"{rel} unreadable: {exc}") from None
        finally:
            os.close(fd)
        if size != entry.size:
            raise GenerationInvalidError(
                gen.name,
                f"{rel} is truncated or grown: {size} bytes, manifest says {entry.size}",
            )
        if not hmac.compare_digest(digest, entry.digest):
            raise GenerationInvalidError(
                gen.name, f"{rel} is corrupted ({entry.algorithm} mismatch)"
            )
    if chunked:
        from .integrity import PageVerifier  # noqa: PLC0415 - threads only when needed

        error = PageVerifier(gen.path, chunked).start().result()
        if error is not None:
            raise GenerationInvalidError(gen.name, error)


def verify(store: Store, gen: Generation) -> Manifest:
    """The manifest, once every file it lists has its size and digest."""
    manifest = check(store, gen)
    verify_contents(store, gen, manifest)
    return manifest
