"""Holds a log file open on the root filesystem, a file in /tmp, and a shared mapping in
/dev/shm; a counter lives in the shared mapping. On SIGUSR1 it prints a summary of all three,
as files the application never reopens would have to be after a restore."""

import mmap
import os
import signal
import sys
import time

os.makedirs("/var/log/app", exist_ok=True)
log = open("/var/log/app/app.log", "a", buffering=1)  # noqa: SIM115 - held open on purpose
tmp = open("/tmp/work.dat", "w+b")  # noqa: SIM115
fd = os.open("/dev/shm/state", os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 4096)
shm = mmap.mmap(fd, 4096, mmap.MAP_SHARED)
state_file = sys.argv[1] if len(sys.argv) > 1 else None


def report(signum, frame):
    with open("/dev/shm/state", "rb") as f:
        shm_value = int.from_bytes(f.read(8), "little")
    with open("/var/log/app/app.log") as f:
        lines = f.read().splitlines()
    extra = ""
    if state_file:
        with open(state_file) as f:
            extra = " state=" + f.read().strip()
    print(f"report shm={shm_value} log_lines={len(lines)} last={lines[-1]}{extra}", flush=True)


signal.signal(signal.SIGUSR1, report)
if state_file:
    os.makedirs(os.path.dirname(state_file), exist_ok=True)
    with open(state_file, "w") as f:
        f.write("written-at-start")
n = 0
while True:
    n += 1
    shm[:8] = n.to_bytes(8, "little")
    log.write(f"line {n}\n")
    tmp.write(b"x" * 100)
    tmp.flush()
    print(f"count {n}", flush=True)
    time.sleep(0.05)
