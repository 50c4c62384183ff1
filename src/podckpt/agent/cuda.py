"""The CUDA driver's checkpoint API, called through ctypes on the driver's own `libcuda.so.1`.

No `cuda-checkpoint` binary and no new dependency: the NVIDIA container runtime puts the
driver library into every GPU container, and the five calls `cuda-checkpoint` wraps
(`cuCheckpointProcessLock` / `Checkpoint` / `Restore` / `Unlock` / `GetState`, driver >= 570)
take the target's PID as the caller's PID namespace sees it, which for the agent (PID 1 of
the container) is what /proc says. Measured on an H200 in ../shared/gpu (docs/agent.md, "GPU").

Which library is loaded matters for safety: the agent runs with more privileges than the
application, so a path taken from the application (its /proc/PID/maps, or a manifest in the
store) is loaded only when root owns it and every directory above it and none of them is
writable by group or others (`trusted_file`): an unprivileged application cannot make the
agent run code of its choosing. The plain name `libcuda.so.1` is resolved by the loader from
the container's own configuration (image and pod), which the application cannot change.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import re

from .errors import GpuError
from .log import Timer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

LIBRARY = "libcuda.so.1"
#: Where NVIDIA's container runtime and distributions put the driver library.
STANDARD_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
    "/usr/lib64/libcuda.so.1",
    "/usr/local/nvidia/lib64/libcuda.so.1",
    "/usr/lib/aarch64-linux-gnu/libcuda.so.1",
    "/usr/lib/wsl/lib/libcuda.so.1",
)
#: cuDriverGetVersion of driver 570, the first with the checkpoint API in the driver library.
MIN_CUDA_VERSION = 12080
#: cuDriverGetVersion from which CUcheckpointRestoreArgs carries GPU remapping pairs (575).
GPU_PAIRS_CUDA_VERSION = 12090

RUNNING, LOCKED, CHECKPOINTED, FAILED = 0, 1, 2, 3
STATE_NAMES = {RUNNING: "running", LOCKED: "locked", CHECKPOINTED: "checkpointed", FAILED: "failed"}
#: CUresult names for messages when the driver cannot name them itself.
_NAMES = {
    1: "CUDA_ERROR_INVALID_VALUE",
    3: "CUDA_ERROR_NOT_INITIALIZED",
    100: "CUDA_ERROR_NO_DEVICE",
    101: "CUDA_ERROR_INVALID_DEVICE",
    304: "CUDA_ERROR_OPERATING_SYSTEM",
    401: "CUDA_ERROR_ILLEGAL_STATE",
    500: "CUDA_ERROR_NOT_FOUND",
    801: "CUDA_ERROR_NOT_SUPPORTED",
    909: "CUDA_ERROR_TIMEOUT",
    999: "CUDA_ERROR_UNKNOWN",
}
_RELEASE_IN_NAME = re.compile(r"libcuda\.so\.(\d+\.\d+(?:\.\d+)*)$")
_RELEASE_IN_PROC = re.compile(r"Kernel Module\s+(?:for\s+\S+\s+)?(\d+\.\d+(?:\.\d+)*)")


class _LockArgs(ctypes.Structure):
    _fields_ = (
        ("timeoutMs", ctypes.c_uint),
        ("reserved0", ctypes.c_uint),
        ("reserved1", ctypes.c_uint64 * 7),
    )


class _GpuPair(ctypes.Structure):
    _fields_ = (("oldUuid", ctypes.c_ubyte * 16), ("newUuid", ctypes.c_ubyte * 16))


class _RestoreArgs(ctypes.Structure):
    """64 bytes in every driver: the pairs pointer at 0, their count at 8, the rest zero."""

    _fields_ = (
        ("gpuPairs", ctypes.c_void_p),
        ("gpuPairsCount", ctypes.c_uint),
        ("reserved", ctypes.c_char * 52),
    )


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    uuid: str  # as nvidia-smi writes it: GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx
    memory_bytes: int

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "uuid": self.uuid, "memory_bytes": self.memory_bytes}


def trusted_file(path: str) -> bool:
    """Root owns the file and every directory above it, and none of them is writable by
    group or others: nobody but root can have put code there."""
    current = os.path.realpath(path)
    try:
        st = os.stat(current)
    except OSError:
        return False
    if st.st_uid != 0 or st.st_mode & 0o022:
        return False
    while current != "/":
        current = os.path.dirname(current)
        try:
            st = os.stat(current)
        except OSError:
            return False
        if st.st_uid != 0 or st.st_mode & 0o022:
            return False
    return True


def driver_release(
    library_path: str, proc_version: str = "/proc/driver/nvidia/version"
) -> str | None:
    """The NVIDIA driver's release (`580.159.04`): from /proc/driver/nvidia/version when the
    container sees it, else from the library's file name (`libcuda.so.580.159.04`)."""
    with contextlib.suppress(OSError):
        with open(proc_version, encoding="utf-8", errors="replace") as f:
            match = _RELEASE_IN_PROC.search(f.read())
        if match:
            return match[1]
    match = _RELEASE_IN_NAME.search(os.path.basename(os.path.realpath(library_path)))
    return match[1] if match else None


def uuid_text(raw: bytes) -> str:
    h = raw.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def uuid_bytes(text: str) -> bytes:
    return bytes.fromhex(text.removeprefix("GPU-").replace("-", ""))


class Driver:
    """One loaded and initialised driver library (cuInit(0) done in the agent: the driver's
    restore needs it in the caller, as cuda-checkpoint does)."""

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        self._lib = lib
        self.path = path
        missing = [
            name
            for name in (
                "cuCheckpointProcessLock",
                "cuCheckpointProcessCheckpoint",
                "cuCheckpointProcessRestore",
                "cuCheckpointProcessUnlock",
                "cuCheckpointProcessGetState",
            )
            if not hasattr(lib, name)
        ]
        self._check(lib.cuInit(ctypes.c_uint(0)), "cuInit")
        version = ctypes.c_int(0)
        self._check(lib.cuDriverGetVersion(ctypes.byref(version)), "cuDriverGetVersion")
        self.cuda_version = version.value
        if missing or self.cuda_version < MIN_CUDA_VERSION:
            raise GpuError(
                f"the NVIDIA driver in {path} (CUDA {self.cuda_version_text}) has no checkpoint"
                " API; checkpointing GPU processes needs driver 570 or newer"
            )
        self.release = driver_release(path)

    @property
    def cuda_version_text(self) -> str:
        return f"{self.cuda_version // 1000}.{self.cuda_version % 1000 // 10}"

    # -- errors ----------------------------------------------------------------------------

    def error_name(self, code: int) -> str:
        name = ctypes.c_char_p()
        fn = getattr(self._lib, "cuGetErrorName", None)
        if fn is not None and fn(ctypes.c_int(code), ctypes.byref(name)) == 0 and name.value:
            return name.value.decode(errors="replace")
        return _NAMES.get(code, "CUresult")

    def _check(self, code: int, call: str, pid: int | None = None) -> None:
        if code != 0:
            raise GpuError(
                f"{call}({pid if pid is not None else ''}) failed: {self.error_name(code)}"
                f" ({code})",
                code=code,
                call=call,
                pid=pid,
            )

    # -- devices ---------------------------------------------------------------------------

    def devices(self) -> list[Device]:
        lib = self._lib
        count = ctypes.c_int(0)
        self._check(lib.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
        found = []
        for ordinal in range(count.value):
            dev = ctypes.c_int(0)
            self._check(lib.cuDeviceGet(ctypes.byref(dev), ctypes.c_int(ordinal)), "cuDeviceGet")
            name = ctypes.create_string_buffer(256)
            self._check(lib.cuDeviceGetName(name, ctypes.c_int(256), dev), "cuDeviceGetName")
            memory = ctypes.c_size_t(0)
            self._check(lib.cuDeviceTotalMem_v2(ctypes.byref(memory), dev), "cuDeviceTotalMem_v2")
            raw = (ctypes.c_ubyte * 16)()
            get_uuid = getattr(lib, "cuDeviceGetUuid_v2", None) or lib.cuDeviceGetUuid
            self._check(get_uuid(raw, dev), "cuDeviceGetUuid")
            found.append(
                Device(name.value.decode(errors="replace"), uuid_text(bytes(raw)), memory.value)
            )
        return found

    # -- the checkpoint API ----------------------------------------------------------------

    def state(self, pid: int) -> int:
        value = ctypes.c_int(-1)
        code = self._lib.cuCheckpointProcessGetState(ctypes.c_int(pid), ctypes.byref(value))
        self._check(code, "cuCheckpointProcessGetState", pid)
        return value.value

    def lock(self, pid: int, timeout_ms: int) -> float:
        args = _LockArgs(timeoutMs=timeout_ms)
        return self._timed("cuCheckpointProcessLock", pid, ctypes.byref(args))

    def checkpoint(self, pid: int) -> float:
        return self._timed("cuCheckpointProcessCheckpoint", pid, None)

    def restore(self, pid: int, pairs: Iterable[tuple[str, str]] = ()) -> float:
        pairs = list(pairs)
        if not pairs:
            return self._timed("cuCheckpointProcessRestore", pid, None)
        array = (_GpuPair * len(pairs))()
        for entry, (old, new) in zip(array, pairs, strict=True):
            entry.oldUuid[:] = list(uuid_bytes(old))
            entry.newUuid[:] = list(uuid_bytes(new))
        args = _RestoreArgs(gpuPairs=ctypes.cast(array, ctypes.c_void_p), gpuPairsCount=len(pairs))
        return self._timed("cuCheckpointProcessRestore", pid, ctypes.byref(args))

    def unlock(self, pid: int) -> float:
        return self._timed("cuCheckpointProcessUnlock", pid, None)

    def _timed(self, call: str, pid: int, args: object) -> float:
        timer = Timer()
        code = getattr(self._lib, call)(ctypes.c_int(pid), args)
        self._check(code, call, pid)
        return timer.elapsed()


_loaded: dict[str, Driver] = {}


def load(preferred: Iterable[str] = ()) -> Driver:
    """The driver from the first usable candidate: `preferred` absolute paths (the library the
    application maps, the one recorded in the manifest) when `trusted_file`, then
    `libcuda.so.1` as the loader finds it, then the standard locations. Loaded once per path.
    Raises GpuError naming what was tried."""
    tried: list[str] = []
    candidates: list[tuple[str, bool]] = [(p, True) for p in preferred]
    candidates += [(LIBRARY, False)] + [(p, True) for p in STANDARD_PATHS]
    for path, absolute in candidates:
        key = os.path.realpath(path) if absolute else path
        if key in _loaded:
            return _loaded[key]
        if absolute:
            if not os.path.exists(path):
                continue
            if not trusted_file(path):
                tried.append(f"{path}: not owned by root or writable by others, not loaded")
                continue
        try:
            lib = ctypes.CDLL(key)
        except OSError as exc:
            tried.append(f"{path}: {exc}")
            continue
        driver = Driver(lib, key if absolute else _resolved(key))
        _loaded[key] = driver
        return driver
    raise GpuError(
        "no usable CUDA driver library (libcuda.so.1) in this container"
        + (": " + "; ".join(tried) if tried else "")
    )


def _resolved(fallback: str) -> str:
    """The file the loader picked for a bare name, from our own /proc/self/maps."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and os.path.basename(parts[5].strip()).startswith("libcuda.so"):
                    return parts[5].strip()
    except OSError:
        pass
    return fallback
