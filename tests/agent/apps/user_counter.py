"""Starts as root, becomes UID:GID (as gosu or su-exec do: setgroups, setgid, setuid, exec),
then counts like counter.py, printing the user it runs as on every line."""

import os
import sys
import time

if len(sys.argv) > 2 and sys.argv[1] == "--as":
    uid, _, gid = sys.argv[2].partition(":")
    os.setgroups([])
    os.setgid(int(gid or uid))
    os.setuid(int(uid))
    os.execv(sys.executable, [sys.executable, __file__, *sys.argv[3:]])

TICK = float(sys.argv[1]) if len(sys.argv) > 1 else 0.05
count = 0
while True:
    count += 1
    print(f"count {count} uid {os.getuid()} gid {os.getgid()}", flush=True)
    time.sleep(TICK)
