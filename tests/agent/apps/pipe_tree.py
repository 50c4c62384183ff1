"""A parent and a forked child joined by a pipe: the child counts into the pipe, the parent
prints what arrives. Both PIDs and the pipe (with bytes in flight) must survive a restore."""

import os
import sys
import time

read_end, write_end = os.pipe()
child = os.fork()
if child == 0:
    os.close(read_end)
    n = 0
    while True:
        n += 1
        os.write(write_end, f"{n}\n".encode())
        time.sleep(0.05)

os.close(write_end)
print(f"parent {os.getpid()} child {child}", flush=True)
with os.fdopen(read_end) as pipe:
    for line in pipe:
        print(f"pipe {line.strip()} child {child}", flush=True)
sys.exit(3)  # the child died: the pipe was closed
