"""Watches a directory (/srv) with inotify through libc (the standard library has no binding)
and prints each file name created there: CRIU must find the watched directory again (irmap)."""

import ctypes
import os
import struct
import sys

WATCHED = sys.argv[1] if len(sys.argv) > 1 else "/srv"
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
IN_CREATE = 0x100
if fd < 0 or libc.inotify_add_watch(fd, WATCHED.encode(), IN_CREATE) < 0:
    sys.exit(f"inotify failed: {ctypes.get_errno()}")
print("watching", flush=True)
while True:
    data = os.read(fd, 4096)
    offset = 0
    while offset < len(data):
        _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
        name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
        print(f"created {name}", flush=True)
        offset += 16 + length
