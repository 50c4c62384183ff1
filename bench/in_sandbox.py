"""The benchmark's programs inside a sandbox (bind-mounted at /bench; the agent's src at
/opt/podckpt). Standard library and the agent's own modules only.

    memtick MIB [INTERVAL_S]       touch MIB MiB, then print `tick N UNIX_TIME` every INTERVAL_S
    stamp ARGV...                  print `stamp UNIX_TIME` on stderr, then exec ARGV (keeps PID)
    dump PID IMAGES SYNC_DIR       raw `criu dump` with the agent's own options, then one syncfs
                                   of SYNC_DIR's filesystem; prints JSON; continues the tree
    restore GEN_DIR                as PID 1: raw `criu restore` of GEN_DIR/images with the
                                   agent's own options (the tree runs when CRIU exits); prints
                                   JSON on stderr, then reaps children until SIGTERM
    hashspeed FILE                 seconds to digest FILE (page cache warm): SHA-256 in one
                                   stream, SHA-256 in 16 MiB chunks on the agent's threads
                                   (what it does), zlib CRC32 in one stream; prints JSON
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def memtick(mib: int, interval: float) -> None:
    block = bytearray(mib << 20)
    pages = len(block) // 4096
    block[::4096] = b"\x01" * pages
    print(f"ready {mib} MiB", flush=True)
    n = 0
    while True:
        n += 1
        print(f"tick {n} {time.time():.4f} {block[(n * 4096 * 7919) % len(block)]}", flush=True)
        time.sleep(interval)


def stamp(argv: list[str]) -> None:
    os.write(2, f"stamp {time.time():.4f}\n".encode())
    os.execvp(argv[0], argv)


def _syncfs(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs")
    finally:
        os.close(fd)


def dump(pid: int, images: str, sync_dir: str) -> None:
    from podckpt.agent import capabilities, criu, proctree  # noqa: PLC0415

    found = criu.find()
    os.makedirs(images, exist_ok=True)
    args = criu.dump_args(pid, Path(images), privileged=capabilities.criu_privileged())
    argv = [found.path, "dump", *args, "-o", f"{images}/dump.log", "-v4", "--display-stats"]
    t0 = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    t1 = time.monotonic()
    _syncfs(sync_dir)
    t2 = time.monotonic()
    proctree.continue_tree(pid)
    stats = criu.parse_stats(done.stdout + "\n" + done.stderr)
    print(json.dumps({"rc": done.returncode, "criu_s": t1 - t0, "syncfs_s": t2 - t1, **stats}))


def restore(gen_dir: str) -> None:
    from podckpt.agent import capabilities, criu  # noqa: PLC0415
    from podckpt.agent.criurestore import inherit_map  # noqa: PLC0415

    found = criu.find()
    manifest = json.loads(Path(gen_dir, "manifest.json").read_text())
    inherit = inherit_map(manifest.get("stdio", {}))
    for fd in inherit:
        os.dup2(fd - 100, fd, inheritable=True)
    args = criu.restore_args(
        Path(gen_dir, "images"),
        Path("/tmp/raw-restore.pid"),
        inherit,
        privileged=capabilities.criu_privileged(),
    )
    args = [a for a in args if a != "--leave-stopped"]
    argv = [found.path, "restore", *args, "-o", "/tmp/raw-restore.log", "-v4", "--display-stats"]
    t0 = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, pass_fds=list(inherit), check=False)
    t1 = time.monotonic()
    for fd in inherit:
        os.close(fd)
    record = {"raw": "restore", "rc": done.returncode, "criu_s": t1 - t0, "end": time.time()}
    os.write(2, (json.dumps(record) + "\n").encode())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(0.05)


def hashspeed(path: str) -> None:
    import hashlib  # noqa: PLC0415
    import zlib  # noqa: PLC0415

    from podckpt.agent import integrity  # noqa: PLC0415
    from podckpt.agent.manifest import FileEntry  # noqa: PLC0415

    data_size = os.path.getsize(path)
    with open(path, "rb") as f:  # warm the page cache
        while f.read(1 << 24):
            pass
    result: dict[str, float | int] = {"bytes": data_size}
    t0 = time.monotonic()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    result["sha256_s"] = time.monotonic() - t0
    t0 = time.monotonic()
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    result["crc32_s"] = time.monotonic() - t0
    chunks = []
    with open(path, "rb") as f:
        while chunk := f.read(integrity.CHUNK_BYTES):
            chunks.append(hashlib.sha256(chunk).hexdigest())
    entry = FileEntry(data_size, "sha256", "", tuple(chunks), integrity.CHUNK_BYTES)
    directory, name = os.path.split(path)
    base, images = os.path.split(directory)
    t0 = time.monotonic()
    error = integrity.PageVerifier(Path(base), {f"{images}/{name}": entry}).start().result()
    result["sha256_chunks_s"] = time.monotonic() - t0
    result["threads"] = integrity.workers()
    assert error is None, error
    print(json.dumps(result))


def main() -> None:
    command, args = sys.argv[1], sys.argv[2:]
    if command == "memtick":
        memtick(int(args[0]), float(args[1]) if len(args) > 1 else 0.01)
    elif command == "stamp":
        stamp(args)
    elif command == "dump":
        dump(int(args[0]), args[1], args[2])
    elif command == "restore":
        restore(args[0])
    elif command == "hashspeed":
        hashspeed(args[0])
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
