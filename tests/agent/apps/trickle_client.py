"""A control-socket client that never finishes its request: one byte now and then, no
newline, forever (a client that could stall an agent that waits for its line)."""

import socket
import sys
import time

path = sys.argv[1] if len(sys.argv) > 1 else "/.podckpt-run/control.sock"
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(path)
print("connected", flush=True)
try:
    while True:
        sock.sendall(b" ")
        time.sleep(0.3)
except OSError:
    print("dropped", flush=True)
