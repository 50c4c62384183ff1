"""The manifest of a generation: what the generation holds, and proof of who wrote it.

`manifest.json` is written last; a generation counts only once it exists (store.py). Format 2:

    {"format": 2, "generation": NAME, "container": NAME, "store": "<identity>/<container>",
     "created": ..., "criu_version": ..., "stdio": {...}, "workload": {...},
     "lineage_start": ..., "setid_files": [...], ...,
     "total_bytes": N, "checksums": {"files.json": {"size": N, "sha256": HEX},
       "images/pages-1.img": {"size": N, "sha256_chunks": {"bytes": 67108864,
                                                           "digests": [HEX, ...]}}, ...},
     "throughput": {"bytes_per_s": N, "seconds": S, "bytes": N},
     "hmac": {"alg": "HMAC-SHA256", "key_id": HEX16, "value": HEX}}

Page images are hashed in chunks (`sha256_chunks`: the SHA-256 of every `bytes` bytes, so that
several threads hash one image while CRIU writes it and while CRIU reads it, integrity.py);
every other file has one digest. The HMAC covers every other field (canonical JSON: sorted
keys, no spaces, ASCII), so the checksums, and with them every byte of the images and saved
files, are authenticated by a key
that only agents hold (the namespace's store key, docs/security.md). Binding the generation
name, the container and the store's identity directory into it means a manifest cannot be
replayed under another name or moved into another workload's store. Without a key (the agent
run by hand, tests) manifests are written and accepted without an HMAC: sha256 still detects
damage, nothing detects forgery.

Format 1 (podckpt 0.1.0) has no HMAC. An agent with a key restores one only when told to
(`PODCKPT_STORE_ACCEPT_UNSIGNED`): accepting unauthenticated manifests by default would let
anyone who can write the volume bypass the HMAC by writing the old format.

Every field is validated here, once, so that no later code meets a list where it expects a
dict: a malformed manifest is one `GenerationInvalidError`, never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os

from .errors import GenerationInvalidError
from .inputs import BadInput, decode_json, safe_abspath, safe_relpath

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FORMAT = 2
#: podckpt 0.1.0 (LAYOUT_VERSION 1, MANIFEST_FORMAT 1): no HMAC, no store identity.
LEGACY_FORMAT = 1
HMAC_ALG = "HMAC-SHA256"
KEY_MIN_BYTES = 16
KEY_MAX_BYTES = 4096
#: Digest algorithms a checksum entry may use (hashlib names); sha256 is what commit writes.
DIGESTS = ("sha256", "blake2b", "sha512")
#: The manifest's file name in a generation's directory.
FILENAME = "manifest.json"
#: Files of a generation that are not covered by its checksums: written after the commit, by
#: the agent or by CRIU's restore (its statistics; CRIU never reads them back).
UNCHECKED = frozenset(
    {
        FILENAME,
        "RESTORED",
        "FAILED",
        "LAZY-FAILED",
        "restore.log",
        "restore.pid",
        "lazy-pages.log",
        "images/stats-restore",
    }
)


@dataclasses.dataclass(frozen=True)
class Trust:
    """How manifests are authenticated in this container."""

    #: The store key (bytes of the key file), or None: no HMAC written or checked.
    key: bytes | None = None
    #: With a key: restore podckpt 0.1.0 (format 1, unsigned) manifests anyway.
    accept_unsigned: bool = False

    @property
    def key_id(self) -> str | None:
        """A name for the key that reveals nothing about it (for diagnosis in messages)."""
        if self.key is None:
            return None
        import hashlib  # noqa: PLC0415 - not on a fresh start's path

        return hashlib.sha256(b"podckpt key id\0" + self.key).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class FileEntry:
    size: int
    algorithm: str
    #: The whole file's digest; empty when the file is digested in chunks.
    digest: str
    #: `sha256_chunks`: the SHA-256 of every `chunk_bytes` bytes, in order.
    chunks: tuple[str, ...] | None = None
    chunk_bytes: int = 0


@dataclasses.dataclass(frozen=True)
class Manifest:
    generation: str
    format: int
    #: True when an HMAC was verified with this agent's key.
    authenticated: bool
    files: dict[str, FileEntry]
    body: dict[str, Any]

    @property
    def criu_version(self) -> str:
        return str(self.body.get("criu_version", ""))

    @property
    def stdio(self) -> dict[str, str]:
        return dict(self.body.get("stdio") or {})

    @property
    def workload(self) -> dict[str, Any] | None:
        value = self.body.get("workload")
        return dict(value) if isinstance(value, dict) else None

    @property
    def origin(self) -> dict[str, str]:
        """Where it was made: `pod_uid`, `boot_id` (absent in manifests of older agents)."""
        value = self.body.get("origin")
        if not isinstance(value, dict):
            return {}
        return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}

    @property
    def lineage_start(self) -> float | None:
        value = self.body.get("lineage_start")
        return float(value) if isinstance(value, int | float) else None

    @property
    def root_pid(self) -> int | None:
        """The dumped tree's root: CRIU restores it at the same PID."""
        value = self.body.get("root_pid")
        return value if type(value) is int else None

    @property
    def highest_pid(self) -> int | None:
        """The highest PID or TID of the dumped tree (None in older generations): a restore
        moves the PID counter above it before CRIU runs (pids.clearing_floor)."""
        value = self.body.get("highest_pid")
        return value if type(value) is int else None

    @property
    def setid_files(self) -> frozenset[str]:
        return frozenset(self.body.get("setid_files") or ())

    @property
    def criu_options(self) -> tuple[str, ...]:
        """The workload's CRIU options the dump used (checked against the allowlist by
        `parse`): the restore of the image needs some of them too."""
        return tuple(self.body.get("criu_options") or ())

    @property
    def stopped_pids(self) -> frozenset[int]:
        """Tasks dumped stopped (the application stopped them): they stay stopped."""
        return frozenset(self.body.get("stopped_pids") or ())

    @property
    def stop_signals(self) -> dict[int, int]:
        """PID -> the signal that stopped it, for tasks dumped stopped (CRIU's stop_signo)."""
        return {int(p): int(s) for p, s in (self.body.get("stop_signals") or {}).items()}

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files.values())


def load_key(path: str | os.PathLike[str]) -> bytes:
    """The store key: the raw bytes of the file the webhook's init container wrote.
    Raises BadInput naming the file."""
    from .inputs import read_bounded  # noqa: PLC0415 - keeps the import list short

    data = read_bounded(path, KEY_MAX_BYTES)
    if len(data) < KEY_MIN_BYTES:
        raise BadInput(path, f"holds {len(data)} bytes; a store key has at least {KEY_MIN_BYTES}")
    return data


def canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def _mac(key: bytes, body: dict[str, Any]) -> str:
    import hashlib  # noqa: PLC0415 - not on a fresh start's path
    import hmac  # noqa: PLC0415

    unsigned = {k: v for k, v in body.items() if k != "hmac"}
    return hmac.new(key, canonical(unsigned), hashlib.sha256).hexdigest()


def seal(body: dict[str, Any], trust: Trust) -> bytes:
    """The bytes of manifest.json for `body` (format 2), with its HMAC when there is a key."""
    body = {k: v for k, v in body.items() if k != "hmac"}
    body["format"] = FORMAT
    if trust.key is not None:
        body["hmac"] = {"alg": HMAC_ALG, "key_id": trust.key_id, "value": _mac(trust.key, body)}
    return (json.dumps(body, indent=1, allow_nan=False) + "\n").encode()


def parse(
    data: bytes,
    *,
    name: str,
    container: str,
    store_id: str,
    trust: Trust,
) -> Manifest:
    """Validate a manifest read from generation `name`. Raises GenerationInvalidError."""
    try:
        body = decode_json(data, FILENAME)
    except BadInput as exc:
        raise GenerationInvalidError(name, str(exc)) from None
    if not isinstance(body, dict):
        raise GenerationInvalidError(name, "manifest.json is not a JSON object")
    fmt = body.get("format")
    if type(fmt) is not int or fmt not in (LEGACY_FORMAT, FORMAT):
        raise GenerationInvalidError(
            name,
            f"unknown manifest format {fmt!r} (written by another podckpt release;"
            f" this agent reads formats {LEGACY_FORMAT} and {FORMAT})",
        )
    authenticated = _authenticate(body, name, trust)
    if body.get("generation") != name:
        raise GenerationInvalidError(
            name, f"manifest.json names generation {body.get('generation')!r}, not this one"
        )
    if body.get("container") != container:
        raise GenerationInvalidError(name, f"made for container {body.get('container')!r}")
    if fmt >= FORMAT and body.get("store") != store_id:
        raise GenerationInvalidError(
            name, f"made for store {body.get('store')!r}, not {store_id!r} (moved from another)"
        )
    files = _checksums(body.get("checksums"), name)
    stdio = body.get("stdio", {})
    if not isinstance(stdio, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in stdio.items()
    ):
        raise GenerationInvalidError(name, "manifest.json: stdio is not a map of strings")
    if not isinstance(body.get("criu_version", ""), str):
        raise GenerationInvalidError(name, "manifest.json: criu_version is not a string")
    workload = body.get("workload")
    if workload is not None and not isinstance(workload, dict):
        raise GenerationInvalidError(name, "manifest.json: workload is not an object")
    lineage = body.get("lineage_start")
    if lineage is not None and (type(lineage) not in (int, float)):
        raise GenerationInvalidError(name, "manifest.json: lineage_start is not a number")
    root = body.get("root_pid")
    if root is not None and (type(root) is not int or not 1 < root < 1 << 22):
        raise GenerationInvalidError(name, "manifest.json: root_pid is not a pid")
    highest = body.get("highest_pid")
    if highest is not None and (type(highest) is not int or not (root or 2) <= highest < 1 << 22):
        raise GenerationInvalidError(name, "manifest.json: highest_pid is not a pid above root_pid")
    setid = body.get("setid_files", [])
    if not isinstance(setid, list) or any(safe_abspath(p) is None for p in setid):
        raise GenerationInvalidError(name, "manifest.json: setid_files is not a list of paths")
    _check_transparency_fields(body, name)
    return Manifest(name, fmt, authenticated, files, body)


def _check_transparency_fields(body: dict[str, Any], name: str) -> None:
    """`criu_options` reach CRIU's command line at restore: only what the allowlist admits
    (a manifest without an HMAC is only as trustworthy as the volume). `stopped_pids` are
    PIDs."""
    from podckpt.api import InvalidValueError  # noqa: PLC0415 - api is imported anyway
    from podckpt.api.criuopts import parse_options  # noqa: PLC0415

    options = body.get("criu_options", [])
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise GenerationInvalidError(name, "manifest.json: criu_options is not a list of strings")
    try:
        if tuple(options) != parse_options("criu_options", ",".join(options)):
            raise GenerationInvalidError(name, "manifest.json: criu_options are not canonical")
    except InvalidValueError as exc:
        raise GenerationInvalidError(name, f"manifest.json: {exc}") from None
    stopped = body.get("stopped_pids", [])
    if not isinstance(stopped, list) or not all(
        type(p) is int and 0 < p < 1 << 22 for p in stopped
    ):
        raise GenerationInvalidError(name, "manifest.json: stopped_pids is not a list of PIDs")
    signals = body.get("stop_signals", {})
    if not isinstance(signals, dict) or not all(
        isinstance(p, str) and p.isdigit() and type(s) is int and 0 < s < 65
        for p, s in signals.items()
    ):
        raise GenerationInvalidError(name, "manifest.json: stop_signals is not PID -> signal")


def _authenticate(body: dict[str, Any], name: str, trust: Trust) -> bool:
    """True when the HMAC verified; False when there is no key to check it with (or an
    unsigned 0.1.0 manifest is accepted on purpose). Raises when it must be refused."""
    if trust.key is None:
        return False
    import hmac  # noqa: PLC0415 - not on a fresh start's path

    mac = body.get("hmac")
    if mac is None:
        if body.get("format") == LEGACY_FORMAT and trust.accept_unsigned:
            return False
        raise GenerationInvalidError(
            name,
            "manifest.json carries no HMAC (written by podckpt 0.1 or by an agent without a"
            " store key); refused because this agent authenticates checkpoints",
        )
    if (
        not isinstance(mac, dict)
        or mac.get("alg") != HMAC_ALG
        or not isinstance(mac.get("value"), str)
    ):
        raise GenerationInvalidError(name, "manifest.json: malformed hmac field")
    if not hmac.compare_digest(mac["value"], _mac(trust.key, body)):
        other = mac.get("key_id")
        hint = (
            f" (signed with key {other}, this agent has key {trust.key_id})"
            if isinstance(other, str) and other != trust.key_id
            else " (altered after it was written)"
        )
        raise GenerationInvalidError(name, "manifest.json does not verify: HMAC mismatch" + hint)
    return True


def _checksums(value: object, name: str) -> dict[str, FileEntry]:
    import hashlib  # noqa: PLC0415 - not on a fresh start's path

    if not isinstance(value, dict) or not value:
        raise GenerationInvalidError(name, "manifest.json lists no files")
    files: dict[str, FileEntry] = {}
    for rel, entry in value.items():
        if safe_relpath(rel) is None or rel in UNCHECKED:
            raise GenerationInvalidError(
                name, f"manifest.json lists {rel!r}, a path that leaves the generation"
            )
        if not isinstance(entry, dict):
            raise GenerationInvalidError(name, f"manifest.json: entry of {rel} is not an object")
        size = entry.get("size")
        if type(size) is not int or size < 0:
            raise GenerationInvalidError(name, f"manifest.json: size of {rel} is not a count")
        if "sha256_chunks" in entry:
            files[rel] = _chunked(rel, size, entry["sha256_chunks"], name)
            continue
        algorithm = next((a for a in DIGESTS if a in entry), None)
        digest = entry.get(algorithm) if algorithm else None
        if (
            algorithm is None
            or not isinstance(digest, str)
            or len(digest) != hashlib.new(algorithm).digest_size * 2
            or any(c not in "0123456789abcdef" for c in digest)
        ):
            raise GenerationInvalidError(name, f"manifest.json: no usable digest for {rel}")
        files[rel] = FileEntry(size, algorithm, digest)
    return files


def _chunked(rel: str, size: int, value: object, name: str) -> FileEntry:
    """A `sha256_chunks` entry: one SHA-256 for every `bytes` bytes of the file."""
    if isinstance(value, dict):
        step, digests = value.get("bytes"), value.get("digests")
        if (
            type(step) is int
            and step > 0
            and isinstance(digests, list)
            and len(digests) == -(-size // step)
            and all(_is_hex(d, 64) for d in digests)
        ):
            return FileEntry(size, "sha256", "", tuple(digests), step)
    raise GenerationInvalidError(name, f"manifest.json: malformed sha256_chunks for {rel}")


def _is_hex(value: object, length: int) -> bool:
    return (
        isinstance(value, str)
        and len(value) == length
        and all(c in "0123456789abcdef" for c in value)
    )
