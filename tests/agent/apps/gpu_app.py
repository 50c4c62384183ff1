"""A CUDA application for the stand-in driver (podckpt.devtools.cuda_standin): N MiB of GPU memory
filled with a pattern, and a counter that lives only in GPU memory, bumped once per tick
(`count N`). A fresh start counts from 1 again; only a restore of the GPU memory continues.
SIGUSR1: read the whole buffer back from the GPU and print `verify mismatches=M counter=C`.
SIGTERM: print `exiting 0: SIGTERM` and exit 0 (to tell a forwarded SIGTERM).

Options: `--mib N` (default 4); `--ghost` holds a deleted 65 MiB file open, which CRIU
refuses to dump (over the agent's 64 MiB ghost limit): a dump that fails after the GPU checkpoint;
`--child` forks a second CUDA process (its own context and memory) that counts as `child N`.
"""

import ctypes
import os
import signal
import sys
import time

args = sys.argv[1:]
mib = int(args[args.index("--mib") + 1]) if "--mib" in args else 4
cuda = ctypes.CDLL("libcuda.so.1")
ptr = ctypes.c_ulonglong
cuda.cuMemAlloc_v2.argtypes = (ctypes.POINTER(ptr), ctypes.c_size_t)
cuda.cuMemcpyHtoD_v2.argtypes = (ptr, ctypes.c_void_p, ctypes.c_size_t)
cuda.cuMemcpyDtoH_v2.argtypes = (ctypes.c_void_p, ptr, ctypes.c_size_t)


def check(rc, what):
    if rc:
        print(f"cuda error {what} {rc}", flush=True)
        sys.exit(3)


def setup(size):
    check(cuda.cuInit(0), "cuInit")
    dev = ctypes.c_int(0)
    check(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ctx = ctypes.c_void_p()
    check(cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev), "cuCtxCreate")
    buf, ctr = ptr(), ptr()
    check(cuda.cuMemAlloc_v2(ctypes.byref(buf), size), "cuMemAlloc")
    check(cuda.cuMemAlloc_v2(ctypes.byref(ctr), 8), "cuMemAlloc")
    zero = ctypes.c_ulonglong(0)
    check(cuda.cuMemcpyHtoD_v2(ctr, ctypes.byref(zero), 8), "cuMemcpyHtoD")
    return buf, ctr


def bump(ctr):
    value = ctypes.c_ulonglong(0)
    check(cuda.cuMemcpyDtoH_v2(ctypes.byref(value), ctr, 8), "cuMemcpyDtoH")
    value.value += 1
    check(cuda.cuMemcpyHtoD_v2(ctr, ctypes.byref(value), 8), "cuMemcpyHtoD")
    return value.value


if "--child" in args and os.fork() == 0:
    _, child_ctr = setup(4096)
    print(f"ready pid={os.getpid()} child", flush=True)
    while True:
        print(f"child {bump(child_ctr)}", flush=True)
        time.sleep(0.05)

size = mib << 20
pattern = bytes((i * 7 + 3) & 0xFF for i in range(256)) * (size // 256)
buf, ctr = setup(size)
check(cuda.cuMemcpyHtoD_v2(buf, pattern, size), "cuMemcpyHtoD")
del pattern  # the only copy is in GPU memory now
if "--ghost" in args:
    ghost = open("/tmp/ghost", "wb")  # noqa: SIM115 - held open on purpose
    for _ in range(65):  # real blocks: CRIU saves holes of a sparse file for free
        ghost.write(b"\1" * (1 << 20))
    ghost.flush()
    os.unlink("/tmp/ghost")

asked = []


def on_usr1(signum, frame):
    asked.append(signum)


def on_term(signum, frame):
    print("exiting 0: SIGTERM", flush=True)
    sys.exit(0)


signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGTERM, on_term)
print(f"ready pid={os.getpid()} mib={mib}", flush=True)
while True:
    count = bump(ctr)
    print(f"count {count}", flush=True)
    if asked:
        asked.clear()
        back = ctypes.create_string_buffer(size)
        check(cuda.cuMemcpyDtoH_v2(back, buf, size), "cuMemcpyDtoH")
        expected = bytes((i * 7 + 3) & 0xFF for i in range(256)) * (size // 256)
        print(f"verify mismatches={int(back.raw != expected)} counter={count}", flush=True)
    time.sleep(0.05)
