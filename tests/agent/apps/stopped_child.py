"""A parent that stops its own child (SIGSTOP) and keeps counting; it reports the child's state
and progress. The child must stay stopped across every checkpoint and restore: its counter in
shared memory never moves, and /proc says `T`."""

import mmap
import os
import signal
import struct
import time

shared = mmap.mmap(-1, 8)
child = os.fork()
if child == 0:
    n = 0
    while True:
        n += 1
        shared[:8] = struct.pack("q", n)
        time.sleep(0.01)

time.sleep(0.3)
os.kill(child, signal.SIGSTOP)
time.sleep(0.1)
count = 0
while True:
    count += 1
    with open(f"/proc/{child}/stat") as stat:
        state = stat.read().rpartition(")")[2].split()[0]
    progress = struct.unpack("q", shared[:8])[0]
    print(f"count {count} child {child} state {state} progress {progress}", flush=True)
    time.sleep(0.05)
