"""What a program run with `tty: true` / `kubectl run -it` sees: whether its stdin is a
terminal, whether that terminal is its controlling terminal (/dev/tty opens), whether it is the
terminal's foreground process group (again on SIGUSR1); then it counts and echoes what is
typed."""

import os
import select
import signal
import sys
import time

asked = [True]
signal.signal(signal.SIGUSR1, lambda *_: asked.append(True))


def report() -> None:
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
        controlling = "yes"
    except OSError:
        controlling = "no"
    try:
        foreground = "yes" if os.tcgetpgrp(0) == os.getpgrp() else "no"
    except OSError:
        foreground = "no"
    print(f"isatty {os.isatty(0)} controlling {controlling} foreground {foreground}", flush=True)


count = 0
while True:
    if asked:
        asked.clear()
        report()
    count += 1
    print(f"count {count}", flush=True)
    ready, _, _ = select.select([0], [], [], 0.05)
    if ready:
        line = sys.stdin.readline()
        print(f"typed {line.strip()} count {count}", flush=True)
    time.sleep(0.05)
