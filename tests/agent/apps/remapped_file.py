"""A file held open whose name was removed while another hard link to it remains (zdtm
`unlink_fstat03`): CRIU dumps it only with `--link-remap`. The program appends a line per tick
through the open descriptor and reports how many lines the file holds."""

import os
import sys
import time

directory = sys.argv[1]
name = os.path.join(directory, "data")
link = os.path.join(directory, "data-link")
for path in (name, link):
    if os.path.exists(path):
        os.unlink(path)
fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
os.link(name, link)
os.unlink(name)
count = 0
while True:
    count += 1
    os.write(fd, f"line {count}\n".encode())
    lines = os.pread(fd, 1 << 20, 0).count(b"\n")
    print(f"count {count} lines {lines}", flush=True)
    time.sleep(0.05)
