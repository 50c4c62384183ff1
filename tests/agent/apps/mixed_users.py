"""A root parent with a worker that dropped to uid 1000 (a pre-fork server's shape)."""

import os
import signal
import sys
import time

child = os.fork()
if child == 0:
    os.setgroups([])
    os.setgid(1000)
    os.setuid(1000)
    while True:
        time.sleep(1)
signal.signal(signal.SIGTERM, lambda *_: (os.kill(child, signal.SIGKILL), sys.exit(0)))


# "ready" only once the worker has dropped to its user (the test dumps right after).
def uids() -> str:
    with open(f"/proc/{child}/status") as status:
        return next(line for line in status if line.startswith("Uid:"))


while "\t1000\t" not in uids():
    time.sleep(0.01)
print(f"ready {child}", flush=True)
while True:
    time.sleep(1)
