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
print(f"ready {child}", flush=True)
while True:
    time.sleep(1)
