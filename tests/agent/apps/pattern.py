"""Fills N MiB with a pattern (every 4 KiB page starts with its own index), then counts; every
`check` ticks it verifies every page and prints `pattern ok`, or `pattern BAD` and exits 3.
SIGTERM: prints `exiting 0: SIGTERM` and exits 0. For the lazy-restore and deadline tests: a
page that came back as zeros or from the wrong place is found.

    pattern.py MIB [CHECK_EVERY_TICKS]
"""

import signal
import struct
import sys
import time

PAGE = 4096


def leave(signum, frame):
    print("exiting 0: SIGTERM", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, leave)
mib = int(sys.argv[1])
check_every = int(sys.argv[2]) if len(sys.argv) > 2 else 10
block = bytearray(mib << 20)
pages = len(block) // PAGE
for page in range(pages):
    struct.pack_into("<Q", block, page * PAGE, page + 1)
print(f"ready {mib} MiB", flush=True)


def check():
    for page in range(pages):
        if struct.unpack_from("<Q", block, page * PAGE)[0] != page + 1:
            print(f"pattern BAD at page {page}", flush=True)
            sys.exit(3)
    print(f"pattern ok {pages} pages", flush=True)


count = 0
while True:
    count += 1
    print(f"count {count}", flush=True)
    if count % check_every == 0:
        check()
    time.sleep(0.05)
