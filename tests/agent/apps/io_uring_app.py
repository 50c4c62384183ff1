"""An event loop that prefers io_uring, as libuv does: it creates a ring if the kernel lets it
(`io_uring_setup`) and keeps it open, else falls back to epoll. It says which, then counts."""

import ctypes
import select
import time

libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
ring = libc.syscall(425, 8, params)  # io_uring_setup(8, &params)
if ring >= 0:
    print(f"backend io_uring fd {ring}", flush=True)
else:
    print(f"backend epoll (io_uring_setup: errno {ctypes.get_errno()})", flush=True)
    poller = select.epoll()
count = 0
while True:
    count += 1
    print(f"count {count}", flush=True)
    time.sleep(0.05)
