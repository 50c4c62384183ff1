"""Counts; exits with code 7 on SIGUSR1 and with 0 on SIGTERM (printing why), so tests can
tell which exit code reached the agent and whether SIGTERM was forwarded."""

import signal
import sys
import time


def leave(code, why):
    def handler(signum, frame):
        print(f"exiting {code}: {why}", flush=True)
        sys.exit(code)

    return handler


signal.signal(signal.SIGUSR1, leave(7, "SIGUSR1"))
signal.signal(signal.SIGTERM, leave(0, "SIGTERM"))
limit = int(sys.argv[1]) if len(sys.argv) > 1 else 0
count = 0
while True:
    count += 1
    print(f"count {count}", flush=True)
    if limit and count >= limit:
        print("done by itself", flush=True)
        sys.exit(0)
    time.sleep(0.05)
