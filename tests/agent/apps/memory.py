"""Touches N MiB of memory, then counts: for the benchmarks and the kill-during-dump test."""

import sys
import time

mib = int(sys.argv[1])
block = bytearray(mib << 20)
for offset in range(0, len(block), 4096):
    block[offset] = 1
count = 0
print(f"ready {mib} MiB", flush=True)
while True:
    count += 1
    print(f"count {count}", flush=True)
    time.sleep(0.05)
