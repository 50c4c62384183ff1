"""Counts forever, one line per tick on stdout: the value lives only in memory, so a restart
from scratch would print `count 1` again while a restore continues where it stopped."""

import sys
import time

TICK = float(sys.argv[1]) if len(sys.argv) > 1 else 0.05

count = 0
while True:
    count += 1
    print(f"count {count}", flush=True)
    time.sleep(TICK)
